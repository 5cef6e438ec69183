"""Medians, ratios, tables and the JSON file of a benchmark run.

The results dict (made by :func:`pike.bench.runner.run_benchmark`, and
exactly what ``--json`` writes) holds ``machine``, ``settings``, ``loadgen``
and one entry per case in ``cases``: its ``mode`` (pingpong, stream, file
-- the stream mode's file row -- or scale) and parameters, the raw ``runs`` of every round and server, and a
``summary`` per server of medians over its successful rounds, with ratios
to the baseline server (asyncio by default) and to the C reference server
``c-ref`` of the same case.

The headline of ping-pong is the server's CPU time per request: it does not
depend on how fast the load generator can drive the server, which on a small
machine limits requests/s on its own.
"""

import json
import math
import statistics
import sys

from pike.bench import READABLE_SCHEMAS, SCHEMA  # noqa: F401 (SCHEMA: re-exported)

#: Client CPU above this share of one core marks a row: the load generator
#: may be the limit on requests/s.
CLIENT_BUSY_PCT = 90.0

#: Other processes' CPU (share of one core) above which a case is flagged noisy.
OTHER_BUSY_PCT = 10.0

#: The reference server every ratio is also given against.
REFERENCE = "c-ref"

_NOISE_FIELDS = (
    ("server_cpu_pct", ("server_cpu_pct",)),
    ("loadgen_cpu_pct", ("loadgen_cpu_pct",)),
    ("other_cpu_pct", ("other_cpu_pct",)),
    ("steal_pct", ("steal_pct",)),
)

#: Per mode: the figures of a run whose median goes into the summary.
MEDIAN_FIELDS = {
    "pingpong": (
        ("rps", ("rps",)),
        ("server_cpu_us_per_req", ("server_cpu_us_per_req",)),
        ("p50_us", ("latency_us", "p50")),
        ("p90_us", ("latency_us", "p90")),
        ("p99_us", ("latency_us", "p99")),
    ) + _NOISE_FIELDS,
    "stream": (
        ("mib_per_s", ("mib_per_s",)),
        ("server_cpu_us_per_mib", ("server_cpu_us_per_mib",)),
    ) + _NOISE_FIELDS,
    # The stream mode's file row: the same figures as an echo stream.
    "file": (
        ("mib_per_s", ("mib_per_s",)),
        ("server_cpu_us_per_mib", ("server_cpu_us_per_mib",)),
    ) + _NOISE_FIELDS,
    "scale": (
        ("rps_without", ("rps_without",)),
        ("rps_with", ("rps_with",)),
        ("rps_ratio", ("rps_ratio",)),
        ("server_cpu_us_per_req_without", ("server_cpu_us_per_req_without",)),
        ("server_cpu_us_per_req_with", ("server_cpu_us_per_req_with",)),
        ("p99_us_without", ("p99_us_without",)),
        ("p99_us_with", ("p99_us_with",)),
        ("idle_kib_per_conn", ("idle_kib_per_conn",)),
        ("rss_before_bytes", ("rss_before_bytes",)),
        ("rss_after_bytes", ("rss_after_bytes",)),
        ("idle_open_s", ("idle_open_s",)),
        ("loadgen_cpu_pct", ("loadgen_cpu_pct_with",)),
        ("other_cpu_pct", ("other_cpu_pct_with",)),
    ),
}

#: Per mode: ``(short name, summary field)`` of the ratios to other servers.
#: A row gets ``<short>_vs_baseline`` and ``<short>_vs_c_ref``.
RATIO_FIELDS = {
    "pingpong": (("cpu", "server_cpu_us_per_req"), ("rps", "rps")),
    "stream": (("mib_per_s", "mib_per_s"), ("cpu", "server_cpu_us_per_mib")),
    "file": (("mib_per_s", "mib_per_s"), ("cpu", "server_cpu_us_per_mib")),
    "scale": (
        ("rps_with", "rps_with"),
        ("cpu_with", "server_cpu_us_per_req_with"),
        ("kib_per_idle", "idle_kib_per_conn"),
    ),
}


def case_mode(case):
    """A case's mode; files of the first layout only had ping-pong."""
    return case.get("mode") or "pingpong"


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


def summarize_case(case, servers=None, baseline="asyncio", reference=REFERENCE):
    """Add ``case["summary"]``: per server, medians and ratios; return it.

    ``servers`` (labels or :class:`~pike.bench.runner.ServerSpec`) fixes the
    order; by default the order in which servers appear in the runs. Ratios
    are to ``baseline`` (``*_vs_baseline``) and to ``reference``
    (``*_vs_c_ref``), each when that server has figures in this case.
    """
    mode = case_mode(case)
    if servers is None:
        labels = list(dict.fromkeys(run["server"] for run in case["runs"]))
    else:
        labels = [getattr(spec, "label", spec) for spec in servers]
    summary = {}
    for label in labels:
        runs = [run for run in case["runs"] if run.get("server") == label]
        skipped = [run for run in runs if "skipped" in run]
        runs = [run for run in runs if "skipped" not in run]
        if not runs and not skipped:
            continue  # not part of this case
        good = [run for run in runs if "error" not in run]
        row = {"runs": len(runs), "failed": len(runs) - len(good)}
        if skipped and not runs:
            row["skipped"] = skipped[0]["skipped"]
        for name, path in MEDIAN_FIELDS[mode]:
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
    refs = (("baseline", baseline), ("c_ref", reference))
    present = {}
    for key, name in refs:
        ref_row = summary.get(name)
        if ref_row is not None and ref_row["runs"] > ref_row["failed"]:
            present[key] = name
    for row in summary.values():
        row["vs"] = {}
        for key, name in refs:
            ref_row = summary.get(name) if key in present else None
            ratios = {}
            for short, field in RATIO_FIELDS[mode]:
                value = _ratio(row[field], ref_row and ref_row[field])
                row[f"{short}_vs_{key}"] = value
                ratios[short] = value
            if ref_row is not None:
                row["vs"][name] = ratios
    if "c_ref" in present:
        _add_per_round_ratios(case, summary, reference)
    case["summary"] = summary
    case["baseline_server"] = baseline
    case["baseline"] = present.get("baseline")
    case["reference"] = present.get("c_ref")
    return summary


def _add_per_round_ratios(case, summary, reference):
    """Each row's ratios to ``reference`` round by round: ``per_round_vs_c_ref``.

    The servers of one round run one after another, so a round's ratio
    compares neighbours in time; on a shared machine its spread over the
    rounds shows how far the median ratio can be trusted. Only rows with at
    least two rounds paired with a good reference round get it.
    """
    mode = case_mode(case)
    paths = dict(MEDIAN_FIELDS[mode])

    def by_round(label, path):
        values = {}
        for run in case["runs"]:
            if run.get("server") == label and "error" not in run and "skipped" not in run:
                value = _dig(run, path)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    values[run.get("round")] = value
        return values

    for label, row in summary.items():
        spreads = {}
        for short, field in RATIO_FIELDS[mode]:
            mine = by_round(label, paths[field])
            theirs = by_round(reference, paths[field])
            ratios = sorted(
                mine[r] / theirs[r] for r in mine if r is not None and theirs.get(r)
            )
            if len(ratios) >= 2:
                spreads[short] = {
                    "median": statistics.median(ratios),
                    "min": ratios[0],
                    "max": ratios[-1],
                    "rounds": len(ratios),
                }
        if spreads:
            row["per_round_vs_c_ref"] = spreads


#: Per mode: the ratio whose round-by-round spread a table's note shows.
SPREAD_NOTE = {"pingpong": ("cpu", "CPU"), "stream": ("mib_per_s", "MiB/s"),
               "file": ("mib_per_s", "MiB/s")}


def _spread_note(summary, mode):
    short, title = SPREAD_NOTE.get(mode, (None, None))
    cells = []
    for label, row in summary.items():
        spread = (row.get("per_round_vs_c_ref") or {}).get(short)
        if spread is not None and label != REFERENCE:
            cells.append(
                f"{label} {spread['median']:.2f} ({spread['min']:.2f}-{spread['max']:.2f})"
            )
    if not cells:
        return None
    return (
        f"{title} vs {REFERENCE} round by round (median, min-max; each round's "
        f"servers run back to back): " + ", ".join(cells)
    )


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


def size_text(nbytes):
    """``64 B``, ``1 KiB``, ``1.5 KiB``, ``1 MiB``."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{nbytes} B"


def _plural(count, word):
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _client_cell(row, flags):
    client = _pct(row.get("loadgen_cpu_pct"))
    if row.get("loadgen_cpu_pct") is not None and row["loadgen_cpu_pct"] >= CLIENT_BUSY_PCT:
        client += "!"
        flags.add("busy")
    return client


def _cpu_cell(row, field, fmt, flags):
    cell = _num(row.get(field), fmt)
    if row.get("server_cpu_source") == "rusage-lifetime" and row.get(field) is not None:
        cell += "*"
        flags.add("lifetime")
    return cell


def _columns(mode, base, ref, micro):
    """``[(header, align, cell(row, flags))]`` of a mode's table."""
    if mode == "pingpong":
        return [
            (f"CPU {micro}/req", ">", lambda r, f: _cpu_cell(r, "server_cpu_us_per_req", ".1f", f)),
            (f"CPU vs {base}", ">", lambda r, f: _times(r["cpu_vs_baseline"])),
            (f"CPU vs {ref}", ">", lambda r, f: _times(r["cpu_vs_c_ref"])),
            ("req/s", ">", lambda r, f: _num(r["rps"], ",.0f")),
            (f"req/s vs {base}", ">", lambda r, f: _times(r["rps_vs_baseline"])),
            (f"req/s vs {ref}", ">", lambda r, f: _times(r["rps_vs_c_ref"])),
            (f"p50 {micro}", ">", lambda r, f: _num(r["p50_us"], ".0f")),
            (f"p99 {micro}", ">", lambda r, f: _num(r["p99_us"], ".0f")),
            ("server CPU", ">", lambda r, f: _pct(r["server_cpu_pct"])),
            ("client CPU", ">", _client_cell),
        ]
    if mode in ("stream", "file"):
        return [
            ("MiB/s", ">", lambda r, f: _num(r["mib_per_s"], ",.1f")),
            (f"MiB/s vs {base}", ">", lambda r, f: _times(r["mib_per_s_vs_baseline"])),
            (f"MiB/s vs {ref}", ">", lambda r, f: _times(r["mib_per_s_vs_c_ref"])),
            (f"CPU {micro}/MiB", ">", lambda r, f: _cpu_cell(r, "server_cpu_us_per_mib", ",.0f", f)),
            (f"CPU vs {base}", ">", lambda r, f: _times(r["cpu_vs_baseline"])),
            (f"CPU vs {ref}", ">", lambda r, f: _times(r["cpu_vs_c_ref"])),
            ("server CPU", ">", lambda r, f: _pct(r["server_cpu_pct"])),
            ("client CPU", ">", _client_cell),
        ]
    return [
        ("req/s alone", ">", lambda r, f: _num(r["rps_without"], ",.0f")),
        ("req/s w/ idle", ">", lambda r, f: _num(r["rps_with"], ",.0f")),
        ("w/ idle / alone", ">", lambda r, f: _times(r["rps_ratio"])),
        (f"CPU {micro}/req alone", ">", lambda r, f: _num(r["server_cpu_us_per_req_without"], ".1f")),
        (f"CPU {micro}/req w/ idle", ">", lambda r, f: _num(r["server_cpu_us_per_req_with"], ".1f")),
        (f"p99 {micro} w/ idle", ">", lambda r, f: _num(r["p99_us_with"], ".0f")),
        ("KiB/idle conn", ">", lambda r, f: _num(r["idle_kib_per_conn"], ".2f")),
        (f"KiB vs {ref}", ">", lambda r, f: _times(r["kib_per_idle_vs_c_ref"])),
        ("RSS MiB before>after", ">", _rss_cell),
        ("client CPU", ">", _client_cell),
    ]


def _rss_cell(row, flags):
    before, after = row.get("rss_before_bytes"), row.get("rss_after_bytes")
    if before is None or after is None:
        return "-"
    return f"{before / 1048576:.1f}>{after / 1048576:.1f}"


def _case_head(case, settings):
    mode = case_mode(case)
    conns = case["connections"]
    if mode == "stream":
        window = case.get("window") or settings.get("stream_window")
        head = (
            f"stream echo: {_plural(conns, 'connection')}, {size_text(case['size'])} writes"
            + (f", {size_text(window)} in flight per connection" if window else "")
        )
    elif mode == "file":
        head = (
            f"file serving: a {size_text(case['size'])} file sent with sendfile to one "
            "connection at a time, every download's bytes counted"
        )
    elif mode == "scale":
        head = (
            f"scale: {_plural(conns, 'active connection')} ({size_text(case['size'])} "
            f"ping-pong) alone, then beside {case['idle']:,} idle connections"
        )
    else:
        head = (
            f"ping-pong echo: {_plural(conns, 'connection')}, "
            f"{size_text(case['size'])} messages"
        )
    rounds = settings.get("repeat")
    window = settings.get("duration_s")
    details = []
    if rounds:
        details.append(f"median of {rounds} round{'s' if rounds != 1 else ''}")
    if window:
        details.append(f"{window:g} s windows")
    if details:
        head += f" ({', '.join(details)})"
    return head


def format_case(case, settings=None, micro=None, skipped_servers=None):
    """The table of one case, as text (no trailing newline)."""
    micro = micro or _micro()
    settings = settings or {}
    mode = case_mode(case)
    summary = case.get("summary")
    if summary is None:
        summary = summarize_case(case, baseline=settings.get("baseline", "asyncio"))
    base = case.get("baseline")
    ref = case.get("reference")
    base_name = base or case.get("baseline_server") or settings.get("baseline") or "baseline"
    ref_name = ref or REFERENCE
    columns = [("server", "<", None), ("impl", "<", None)] + _columns(
        mode, base_name, ref_name, micro
    )
    rows = []
    notes = []
    flags = set()
    for label, row in summary.items():
        if row.get("skipped") is not None:
            rows.append([label, "-", f"skipped: {row['skipped']}"])
            continue
        if row["failed"] == row["runs"]:
            rows.append([label, "-", f"FAILED ({row['failed']}/{row['runs']} runs)"])
        else:
            cells = [label, row.get("implementation") or "-"]
            cells += [cell(row, flags) for _, _, cell in columns[2:]]
            rows.append(cells)
            if row["failed"]:
                notes.append(f"{label}: {row['failed']} of {row['runs']} runs failed")
        firsts = list(dict.fromkeys(error.splitlines()[0] for error in row.get("errors", [])))
        for error in firsts[:3]:
            notes.append(f"{label}: {error}")
    widths = [len(name) for name, _, _ in columns]
    for cells in rows:
        if len(cells) < len(columns):
            cells = cells[:2]  # a message row: its message spans the figure columns
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], len(cell))

    def fmt_line(cells):
        parts = []
        for (name, align, _), width, cell in zip(columns, widths, cells):
            parts.append(cell.ljust(width) if align == "<" else cell.rjust(width))
        return "  ".join(parts).rstrip()

    lines = [_case_head(case, settings)]
    lines.append(fmt_line([name for name, _, _ in columns]))
    lines.append(fmt_line(["-" * w for w in widths]))
    for cells in rows:
        if len(cells) < len(columns):
            lines.append(fmt_line(cells[:2]) + "  " + cells[2])
        else:
            lines.append(fmt_line(cells))
    if "busy" in flags:
        what = "MiB/s" if mode in ("stream", "file") else "req/s"
        notes.append(
            f"! the load generator used >= {CLIENT_BUSY_PCT:.0f}% of its core: it may "
            f"limit {what}; the server's CPU figures are the fairer comparison"
        )
    if "lifetime" in flags:
        notes.append(
            "* server CPU over its whole life (start-up and warm-up included), "
            "from getrusage: no per-window source on this platform"
        )
    if base is None:
        notes.append(f"no {base_name} figures in this case: its ratios are not shown")
    if ref is None:
        why = (skipped_servers or {}).get(REFERENCE)
        notes.append(
            f"no {REFERENCE} figures in this case"
            + (f" ({REFERENCE} skipped: {why})" if why else "")
            + f": ratios to {REFERENCE} are not shown"
        )
    spread = _spread_note(summary, mode)
    if spread is not None:
        notes.append(spread)
    others = [row["other_cpu_pct"] for row in summary.values() if row.get("other_cpu_pct") is not None]
    if others and max(others) >= OTHER_BUSY_PCT:
        notes.append(
            f"noisy machine: other processes used up to {max(others):.0f}% of a core "
            "during these runs (median per server); treat small differences with care"
        )
    steals = [row["steal_pct"] for row in summary.values() if row.get("steal_pct") is not None]
    if steals and max(steals) >= OTHER_BUSY_PCT:
        notes.append(f"the hypervisor stole up to {max(steals):.0f}% of a core (steal time)")
    lines.extend(f"  {note}" for note in notes)
    return "\n".join(lines)


_MODE_LEGENDS = {
    "pingpong": (
        "ping-pong: CPU {micro}/req is the server process's CPU time (user+system) "
        "per request over the measured window; lower is better"
    ),
    "stream": (
        "stream: MiB/s echoed and verified; CPU {micro}/MiB is the server's CPU time "
        "per MiB echoed; higher MiB/s and lower CPU are better"
    ),
    "file": (
        "file: MiB/s of a file served with sendfile (pike: Transport.sendfile; asyncio: "
        "loop.sendfile; c-ref: sendfile(2)) to a client that reads it to EOF and checks "
        "its size; CPU {micro}/MiB is the server's CPU time per MiB received"
    ),
    "scale": (
        "scale: req/s of the active connections alone and beside the idle ones (same "
        "server process); KiB/idle conn is the growth of the server's VmRSS from before "
        "the idle connections were opened to after it had accepted them all, over their "
        "number (kernel socket buffers are not in it)"
    ),
}


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
    loadgen = results.get("loadgen") or {}
    if loadgen.get("kind"):
        head.append(
            "load generator: "
            + ("C (native/loadgen.c)" if loadgen["kind"] == "c" else "Python (pike.bench.loadgen)")
        )
    for server, why in (results.get("skipped_servers") or {}).items():
        head.append(f"{server} not run: {why}")
    for note in results.get("notes") or []:
        head.append(note)
    modes = list(dict.fromkeys(case_mode(case) for case in results.get("cases", [])))
    for mode in modes:
        head.append(_MODE_LEGENDS[mode].format(micro=micro))
    parts = ["\n".join(head)]
    for case in results.get("cases", []):
        parts.append(format_case(case, settings, micro, results.get("skipped_servers")))
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
    """Read a results file written by :func:`write_json` (this layout or an older one)."""
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    if not isinstance(results, dict) or results.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"{path}: not a pike bench results file ({', '.join(READABLE_SCHEMAS)})")
    for case in results.get("cases", []):
        summary = case.get("summary")
        if summary is None or any("vs" not in row for row in summary.values()):
            # Older layout: recompute medians and ratios from the raw runs.
            summarize_case(case, baseline=results.get("settings", {}).get("baseline", "asyncio"))
    return results


def has_failures(results):
    return any(
        "error" in run for case in results.get("cases", []) for run in case.get("runs", [])
    )
