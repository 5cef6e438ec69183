"""Every benchmark of pike, behind ``python -m pike bench``: one home, split by mode.

``python -m pike bench --help`` lists the modes. The echo benchmark is the
default: every server and the load generator run in processes of their
own, talk only over 127.0.0.1, and are pinned to separate cores where the
platform allows. Its modes: ping-pong (requests/s, latency and the
server's CPU time per request), stream (MiB/s and CPU per MiB, echoed, and
of a file served with sendfile) and scale (the active rate beside
thousands of idle connections, and memory per idle connection); beside
them the soak, an endurance check of pike's own servers, and TLS.

The echo benchmark's machinery, one module per job:

* :mod:`pike.bench.cli`: the command line; hands the tool modes below to
  their modules.
* :mod:`pike.bench.runner`: every case, server and round of a run, and the
  results dict.
* :mod:`pike.bench.runs`: one measured run of a server, per mode (and the
  scale mode's idle connections).
* :mod:`pike.bench.processes`: child processes (always ended), the server
  processes, and what ``/proc`` says about them.
* :mod:`pike.bench.loadgen_runs`: running the C or the Python load
  generator, figures in one layout.
* :mod:`pike.bench.cpu`: CPU-time accounting of a process (``/proc``,
  psutil, ``getrusage``) and core pinning; standard library only.
* :mod:`pike.bench.servers`: the echo servers, one entry point per kind
  (``python -m pike.bench.servers KIND --port 0``); ``c-ref`` is the C
  reference server built by :mod:`pike.bench.native`.
* :mod:`pike.bench.native`: the C reference server and the C load
  generator, compiled from the project's sources on first use.
* :mod:`pike.bench.loadgen`: the Python load generator, the fallback where
  the C one cannot be built (``python -m pike.bench.loadgen --port P ...``).
* :mod:`pike.bench.fileserve`: the stream mode's file row: file servers,
  and the client that counts every byte.
* :mod:`pike.bench.report`: medians, ratios, the tables, the JSON file.
* :mod:`pike.bench.headline`: the default run's one table and its sentence.
* :mod:`pike.bench.plot`: the chart (``--plot``), when matplotlib is installed.
* ``--mode soak``: :mod:`pike.bench.soak` (connect / echo / close cycles with
  every byte checked, and the watch on a server's fds and memory),
  :mod:`pike.bench.soak_cli` (its servers, options and table) and
  :mod:`pike.bench.chat_echo` (the Chat line-echo server it runs).
* ``--mode tls`` (or ``--tls``): :mod:`pike.bench.tls`.

The tool modes, each a module with options of its own (``--mode NAME --help``):

* ``micro``: :mod:`pike.bench.micro`, the pytest-benchmark microbenchmarks.
* ``callgrind-echo``, ``callgrind-io``: :mod:`pike.bench.callgrind_echo`,
  :mod:`pike.bench.callgrind_io`, instruction counts under valgrind.
* ``asynchat``: :mod:`pike.bench.asynchat_lines`, pike.compat against the
  standard library's asynchat.
* ``compat-scale``: :mod:`pike.bench.compat_scale` (with the servers of
  :mod:`pike.bench.compat_servers`).
* ``workers``: :mod:`pike.bench.echo_workers`, ``python -m pike echo``
  with worker processes against asyncio.
* ``spiro``: :mod:`pike.bench.spiro_calls`, SPIRO round trips and sessions.

Importing this package starts nothing and imports none of its modules.
"""

#: Version of the JSON layout written by ``--json``.
SCHEMA = "pike-bench/2"
#: Older layouts that ``--from-json`` still reads.
READABLE_SCHEMAS = ("pike-bench/1", SCHEMA)
