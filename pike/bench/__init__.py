"""The side-by-side echo benchmark behind ``python -m pike bench``.

Every server and the load generator run in processes of their own, talk
only over 127.0.0.1, and are pinned to separate cores where the platform
allows. One module per job:

* :mod:`pike.bench.cpu`: CPU-time accounting of a process (``/proc``,
  psutil, ``getrusage``) and core pinning; standard library only.
* :mod:`pike.bench.servers`: the echo servers, one entry point per kind
  (``python -m pike.bench.servers KIND --port 0``).
* :mod:`pike.bench.loadgen`: the load generator, independent of pike's own
  I/O code (``python -m pike.bench.loadgen --port P ...``).
* :mod:`pike.bench.runner`: starts the processes, interleaves servers and
  rounds, collects the figures, and always cleans up.
* :mod:`pike.bench.report`: medians, the tables, the JSON file.
* :mod:`pike.bench.cli`: the command line.

Importing this package starts nothing and imports none of its modules.
"""

#: Version of the JSON layout written by ``--json``.
SCHEMA = "pike-bench/1"
