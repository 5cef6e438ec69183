"""Medians, tables and the JSON file of a benchmark run.

The results dict (made by :func:`pike.bench.runner.run_benchmark`, and
exactly what ``--json`` writes) holds ``machine``, ``settings`` and one
entry per case in ``cases``: the raw ``runs`` of every round and server,
and a ``summary`` per server of medians over its successful rounds, with
ratios to the baseline server (asyncio by default).

The headline is the server's CPU time per request: it does not depend on
how fast one Python load generator can drive the server, which often
limits requests/s on its own.
"""

import json
import math
import statistics
import sys

from pike.bench import SCHEMA

#: Client CPU above this share of one core marks a row: the load generator
#: may be the limit on requests/s.
CLIENT_BUSY_PCT = 90.0

#: Figures of a run whose median goes into the summary.
MEDIAN_FIELDS = (
    ("rps", ("rps",)),
    ("server_cpu_us_per_req", ("server_cpu_us_per_req",)),
    ("p50_us", ("latency_us", "p50")),
    ("p90_us", ("latency_us", "p90")),
    ("p99_us", ("latency_us", "p99")),
    ("server_cpu_pct", ("server_cpu_pct",)),
    ("loadgen_cpu_pct", ("loadgen_cpu_pct",)),
    ("other_cpu_pct", ("other_cpu_pct",)),
    ("steal_pct", ("steal_pct",)),
)

#: Other processes' CPU (share of one core) above which a case is flagged noisy.
OTHER_BUSY_PCT = 10.0


def _dig(mapping, path):
    for key in path:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def _median(values):
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(values) if values else None


def _ratio(value, base):
    if value is None or not base:
        return None
    return value / base


def summarize_case(case, servers=None, baseline="asyncio"):
    """Add ``case["summary"]``: per server, medians and ratios; return it.

    ``servers`` (labels or :class:`~pike.bench.runner.ServerSpec`) fixes the
    order; by default the order in which servers appear in the runs.
    """
    if servers is None:
        labels = list(dict.fromkeys(run["server"] for run in case["runs"]))
    else:
        labels = [getattr(spec, "label", spec) for spec in servers]
    summary = {}
    for label in labels:
        runs = [run for run in case["runs"] if run.get("server") == label]
        good = [run for run in runs if "error" not in run]
        row = {"runs": len(runs), "failed": len(runs) - len(good)}
        for name, path in MEDIAN_FIELDS:
            row[name] = _median([_dig(run, path) for run in good])
        impls = {_dig(run, ("server_info", "implementation")) for run in good}
        impls.discard(None)
        row["implementation"] = ",".join(sorted(impls)) or None
        sources = {run.get("server_cpu_source") for run in good}
        sources.discard(None)
        row["server_cpu_source"] = ",".join(sorted(sources)) or None
        errors = [run["error"] for run in runs if "error" in run]
        if errors:
            row["errors"] = errors
        summary[label] = row
    base = summary.get(baseline)
    for row in summary.values():
        row["rps_vs_baseline"] = _ratio(row["rps"], base and base["rps"])
        row["cpu_vs_baseline"] = _ratio(
            row["server_cpu_us_per_req"], base and base["server_cpu_us_per_req"]
        )
    case["summary"] = summary
    case["baseline"] = baseline if base is not None else None
    return summary


# -- text -----------------------------------------------------------------------


def _micro():
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "\u00b5".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "us"
    return "\u00b5s"


def _num(value, fmt):
    return "-" if value is None else format(value, fmt)


def _times(value):
    return "-" if value is None else f"{value:.2f}x"


def _pct(value):
    return "-" if value is None else f"{value:.0f}%"


def format_case(case, settings=None, micro=None):
    """The table of one case, as text (no trailing newline)."""
    micro = micro or _micro()
    settings = settings or {}
    summary = case.get("summary") or summarize_case(case)
    base = case.get("baseline")
    conns = case["connections"]
    rounds = settings.get("repeat")
    window = settings.get("duration_s")
    head = (
        f"ping-pong echo: {conns} connection{'s' if conns != 1 else ''}, "
        f"{case['size']}-byte messages"
    )
    details = []
    if rounds:
        details.append(f"median of {rounds} round{'s' if rounds != 1 else ''}")
    if window:
        details.append(f"{window:g} s windows")
    if details:
        head += f" ({', '.join(details)})"
    base_name = base or "baseline"
    columns = [
        ("server", "<"),
        ("impl", "<"),
        ("req/s", ">"),
        (f"CPU {micro}/req", ">"),
        (f"p50 {micro}", ">"),
        (f"p99 {micro}", ">"),
        (f"req/s vs {base_name}", ">"),
        (f"CPU/req vs {base_name}", ">"),
        ("server CPU", ">"),
        ("client CPU", ">"),
    ]
    rows = []
    notes = []
    busy = False
    lifetime = False
    for label, row in summary.items():
        if row["failed"] == row["runs"]:
            rows.append([label, "-", f"FAILED ({row['failed']}/{row['runs']} runs)"] + [""] * 7)
        else:
            client = _pct(row["loadgen_cpu_pct"])
            if row["loadgen_cpu_pct"] is not None and row["loadgen_cpu_pct"] >= CLIENT_BUSY_PCT:
                client += "!"
                busy = True
            cpu = _num(row["server_cpu_us_per_req"], ".1f")
            if row.get("server_cpu_source") == "rusage-lifetime":
                cpu += "*"
                lifetime = True
            rows.append(
                [
                    label,
                    row.get("implementation") or "-",
                    _num(row["rps"], ",.0f"),
                    cpu,
                    _num(row["p50_us"], ".0f"),
                    _num(row["p99_us"], ".0f"),
                    _times(row["rps_vs_baseline"]),
                    _times(row["cpu_vs_baseline"]),
                    _pct(row["server_cpu_pct"]),
                    client,
                ]
            )
            if row["failed"]:
                notes.append(f"{label}: {row['failed']} of {row['runs']} runs failed")
        for error in row.get("errors", [])[:3]:
            notes.append(f"{label}: {error.splitlines()[0]}")
    widths = [len(name) for name, _ in columns]
    for cells in rows:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], len(cell))
    lines = [head]

    def fmt_line(cells):
        parts = []
        for (name, align), width, cell in zip(columns, widths, cells):
            parts.append(cell.ljust(width) if align == "<" else cell.rjust(width))
        return "  ".join(parts).rstrip()

    lines.append(fmt_line([name for name, _ in columns]))
    lines.append(fmt_line(["-" * w for w in widths]))
    lines.extend(fmt_line(cells) for cells in rows)
    if busy:
        notes.append(
            f"! the load generator used >= {CLIENT_BUSY_PCT:.0f}% of its core: it may "
            f"limit req/s; CPU {micro}/req is the fairer comparison"
        )
    if lifetime:
        notes.append(
            "* server CPU over its whole life (start-up and warm-up included), "
            "from getrusage: no per-window source on this platform"
        )
    if base is None:
        notes.append("no baseline server in this case: ratios are not shown")
    others = [row["other_cpu_pct"] for row in summary.values() if row.get("other_cpu_pct") is not None]
    if others and max(others) >= OTHER_BUSY_PCT:
        notes.append(
            f"noisy machine: other processes used up to {max(others):.0f}% of a core "
            "during these windows (median per server); treat small differences with care"
        )
    steals = [row["steal_pct"] for row in summary.values() if row.get("steal_pct") is not None]
    if steals and max(steals) >= OTHER_BUSY_PCT:
        notes.append(f"the hypervisor stole up to {max(steals):.0f}% of a core (steal time)")
    lines.extend(f"  {note}" for note in notes)
    return "\n".join(lines)


def format_report(results, micro=None):
    """All tables of a results dict, with a short header, as text."""
    micro = micro or _micro()
    machine = results.get("machine", {})
    settings = results.get("settings", {})
    head = [
        "pike bench: echo servers side by side "
        f"(pike {machine.get('pike_version', '?')}, "
        f"Python {machine.get('python', '?')} {machine.get('python_implementation', '')}, "
        f"{machine.get('cpu_count', '?')} CPUs)".replace(" ,", ","),
    ]
    if machine.get("server_cpu") is not None:
        head.append(
            f"pinning: servers on CPU {machine['server_cpu']}, "
            f"load generator on CPU {machine['loadgen_cpu']}"
        )
    else:
        head.append("no CPU pinning (needs sched_setaffinity and 2 CPUs)")
    head.append(
        f"CPU {micro}/req: the server process's CPU time (user+system) per request "
        "over the measured window; lower is better"
    )
    parts = ["\n".join(head)]
    for case in results.get("cases", []):
        parts.append(format_case(case, settings, micro))
    if "elapsed_s" in results:
        parts.append(f"total time: {results['elapsed_s']:.0f} s")
    return "\n\n".join(parts) + "\n"


# -- JSON ----------------------------------------------------------------------


def write_json(results, path):
    """Write the results dict as JSON (all raw runs and the medians)."""
    with open(path, "w", encoding="utf-8") as f:
        # Insertion order is kept: it is the order of the servers in the tables.
        json.dump(results, f, indent=2, allow_nan=False)
        f.write("\n")


def read_json(path):
    """Read a results file written by :func:`write_json`."""
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    if results.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} results file")
    return results


def has_failures(results):
    return any(
        "error" in run for case in results.get("cases", []) for run in case.get("runs", [])
    )
