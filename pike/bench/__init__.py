"""The side-by-side echo benchmark behind ``python -m pike bench``.

Every server and the load generator run in processes of their own, talk
only over 127.0.0.1, and are pinned to separate cores where the platform
allows. Three modes: ping-pong (requests/s, latency and the server's CPU
time per request), stream (MiB/s and CPU per MiB) and scale (the active rate
beside thousands of idle connections, and memory per idle connection); and
the soak, an endurance check of pike's own servers. One module per job:

* :mod:`pike.bench.cpu`: CPU-time accounting of a process (``/proc``,
  psutil, ``getrusage``) and core pinning; standard library only.
* :mod:`pike.bench.servers`: the echo servers, one entry point per kind
  (``python -m pike.bench.servers KIND --port 0``); ``c-ref`` is the C
  reference server built by :mod:`pike.bench.native`.
* :mod:`pike.bench.native`: the C reference server and the C load
  generator, compiled from the project's sources on first use.
* :mod:`pike.bench.loadgen`: the Python load generator, the fallback where
  the C one cannot be built (``python -m pike.bench.loadgen --port P ...``).
* :mod:`pike.bench.runner`: starts the processes, interleaves servers and
  rounds, collects the figures, and always cleans up.
* :mod:`pike.bench.report`: medians, ratios, the tables, the JSON file.
* :mod:`pike.bench.headline`: the default run's one table and its sentence.
* :mod:`pike.bench.soak`: connect / echo / close cycles with every byte
  checked, and the watch on a server's fds and memory.
* :mod:`pike.bench.soak_cli`: ``--mode soak``: its servers, options and table.
* :mod:`pike.bench.chat_echo`: the Chat line-echo server the soak runs.
* :mod:`pike.bench.plot`: the chart (``--plot``), when matplotlib is installed.
* :mod:`pike.bench.cli`: the command line.

Importing this package starts nothing and imports none of its modules.
"""

#: Version of the JSON layout written by ``--json``.
SCHEMA = "pike-bench/2"
#: Older layouts that ``--from-json`` still reads.
READABLE_SCHEMAS = ("pike-bench/1", SCHEMA)
