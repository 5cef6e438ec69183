"""The default run's one table: the headline servers, every ping-pong case side by side.

One row per server, one group of columns per case (10 and 100 connections
at 1 KiB by default), then a sentence made from the figures that says what
they mean for pike: its CPU per request against the C reference server and
against asyncio, on C and on the pure-Python path.
"""

from pike.bench import report

#: The servers the sentence speaks of, by role.
C_REF = report.REFERENCE


def _pike_rows(summary):
    """``(on C, on the pure path)``: the labels of pike's rows (None where absent)."""
    on_c = on_python = None
    for label, row in summary.items():
        if not label.startswith("pike-"):
            continue
        if row.get("implementation") == "c" or label.endswith(":c"):
            on_c = on_c or label
        elif row.get("implementation") == "python" or label.endswith(":python"):
            on_python = on_python or label
    return on_c, on_python


def _good(row):
    return row is not None and row.get("runs", 0) > row.get("failed", 0)


def _case_title(case):
    return f"{case['connections']:,} conn x {report.size_text(case['size'])}"


def format_headline(results, micro=None):
    """The headline table of the ping-pong cases of ``results``, and what it means."""
    micro = micro or report._micro()
    settings = results.get("settings", {})
    cases = [case for case in results.get("cases", []) if report.case_mode(case) == "pingpong"]
    if not cases:
        return ""
    for case in cases:
        if case.get("summary") is None:
            report.summarize_case(case, baseline=settings.get("baseline", "asyncio"))
    base = settings.get("baseline", "asyncio")
    labels = list(dict.fromkeys(label for case in cases for label in case["summary"]))
    group = [f"CPU {micro}/req", f"vs {C_REF}", f"vs {base}", "req/s"]
    header1 = ["", ""]
    header2 = ["server", "impl"]
    for case in cases:
        header1 += [_case_title(case)] + [""] * (len(group) - 1)
        header2 += group
    rows, notes = [], []
    for label in labels:
        impl, cells = "-", []
        for case in cases:
            row = case["summary"].get(label)
            if not _good(row):
                cells += ["FAILED" if row else "-", "", "", ""]
                continue
            impl = row.get("implementation") or impl
            cells += [
                report._num(row["server_cpu_us_per_req"], ".1f"),
                report._times(row["cpu_vs_c_ref"]),
                report._times(row["cpu_vs_baseline"]),
                report._num(row["rps"], ",.0f"),
            ]
        rows.append([label, impl] + cells)
        for case in cases:
            row = case["summary"].get(label) or {}
            for error in list(dict.fromkeys(e.splitlines()[0] for e in row.get("errors", [])))[:2]:
                notes.append(f"{label} ({_case_title(case)}): {error}")
    widths = [max(len(line[i]) for line in [header2] + rows) for i in range(len(header2))]
    # A case's title spans its group of columns.
    for start in range(2, len(header2), len(group)):
        span = sum(widths[start:start + len(group)]) + 2 * (len(group) - 1)
        title = header1[start]
        if len(title) > span:
            widths[start] += len(title) - span

    def line(cells, left=2):
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths)):
            out.append(cell.ljust(width) if i < left else cell.rjust(width))
        return "  ".join(out).rstrip()

    rounds = settings.get("repeat")
    window = settings.get("duration_s")
    head = (
        f"pike bench: ping-pong echo, the server's CPU time per request (lower is better), "
        f"median of {rounds} round{'s' if rounds != 1 else ''} of {window:g} s "
        f"(Python {results.get('machine', {}).get('python', '?')})"
    )
    title_cells = []
    for start in range(2, len(header2), len(group)):
        span = sum(widths[start:start + len(group)]) + 2 * (len(group) - 1)
        title_cells.append(header1[start].center(span))
    lead = sum(widths[:2]) + 2
    lines = [head, " " * lead + "  ".join(title_cells).rstrip(), line(header2),
             line(["-" * w for w in widths])]
    lines += [line(cells) for cells in rows]
    lines.append("")
    lines.append(meaning(cases, base))
    others = [
        row["other_cpu_pct"] for case in cases for row in case["summary"].values()
        if row.get("other_cpu_pct") is not None
    ]
    if others and max(others) >= report.OTHER_BUSY_PCT:
        notes.append(
            f"noisy machine: other processes used up to {max(others):.0f}% of a core; "
            "compare ratios within this run, not figures across runs"
        )
    for note in results.get("notes") or []:
        notes.append(note)
    for server, why in (results.get("skipped_servers") or {}).items():
        notes.append(f"{server} not run: {why}")
    lines += [f"  {note}" for note in notes]
    lines.append(
        "  every server and every case: --quick (one short round) or --full "
        "(the whole matrix, 3 rounds); --json PATH keeps every figure"
    )
    if "elapsed_s" in results:
        lines.append(f"total time: {results['elapsed_s']:.0f} s")
    return "\n".join(lines) + "\n"


def _pair(row, base):
    """``"1.87x ... and 0.25x ..."`` pieces of a row: (to c-ref, to the baseline)."""
    ref = row.get("cpu_vs_c_ref")
    against = row.get("cpu_vs_baseline")
    return (None if ref is None else f"{ref:.2f}x", None if against is None else f"{against:.2f}x")


def meaning(cases, base="asyncio"):
    """A sentence, made from the figures, on what the table says about pike."""
    have_ref = any(case.get("reference") for case in cases)
    have_base = any(case.get("baseline") for case in cases)
    clauses = []
    for impl, where in (("c", "on C"), ("python", "on the pure-Python path")):
        per_case = []
        for case in cases:
            on = dict(zip(("c", "python"), _pike_rows(case["summary"])))
            row = case["summary"].get(on[impl]) if on[impl] else None
            if not _good(row):
                continue
            ref, against = _pair(row, base)
            figures = " and ".join(x for x in (ref, against) if x)
            if figures:
                per_case.append(f"{figures} at {case['connections']:,} connections")
        if per_case:
            clauses.append(f"{where} {', '.join(per_case)}")
    if not clauses or not (have_ref or have_base):
        return ("What it means: no ratio could be formed (pike, the C reference or "
                f"{base} has no figures in this run); see the notes.")
    whom = " and ".join(
        x for x, present in (("of the C reference server", have_ref), (f"of {base}", have_base))
        if present
    )
    return (
        f"What it means: per request pike needs this many times the CPU {whom}: "
        + "; ".join(clauses) + ". Below 1.00x is cheaper. The C reference is about what "
        "the kernel's work costs, so pike's ratio to it is the price of its Python layers "
        "and of the interpreter."
    )
