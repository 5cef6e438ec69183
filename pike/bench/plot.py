"""The chart of ``python -m pike bench --plot PATH.png``.

A grouped bar chart of the server's CPU time per request (per MiB in stream
mode), one group per case and one bar per server, a panel per mode. It
needs matplotlib, which pike does not depend on (``pip install
'pike[bench]'`` or ``pip install matplotlib``); :func:`unavailable` says
whether it can be drawn here. Only the non-interactive Agg canvas is used:
no display is needed and no global pyplot state is touched.
"""

from pike.bench import report

#: Per mode: (summary field, axis label, panel title).
PANELS = {
    "pingpong": ("server_cpu_us_per_req", "server CPU \u00b5s per request", "ping-pong"),
    "stream": ("server_cpu_us_per_mib", "server CPU \u00b5s per MiB", "stream"),
    "file": ("server_cpu_us_per_mib", "server CPU \u00b5s per MiB", "file served by sendfile"),
    "scale": (
        "server_cpu_us_per_req_with",
        "server CPU \u00b5s per request",
        "scale (active connections beside the idle ones)",
    ),
}


class PlotUnavailable(Exception):
    """matplotlib cannot be imported here; the message says how to get it."""


def unavailable():
    """None when the chart can be drawn here, else why not (one line)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except Exception as exc:  # ImportError, or a broken installation
        return (
            f"matplotlib is not available ({exc.__class__.__name__}: {exc}); "
            "install it with: pip install matplotlib"
        )
    return None


def _case_label(case):
    mode = report.case_mode(case)
    size = report.size_text(case["size"])
    if mode == "scale":
        return f"{case['idle']:,} idle\n+{case['connections']} x {size}"
    if mode == "file":
        return f"{size} file"
    return f"{case['connections']} conn\n{size}"


def panels(results):
    """``[(mode, field, ylabel, title, case labels, {server: [value or None]})]``."""
    out = []
    cases = results.get("cases", [])
    for mode, (field, ylabel, title) in PANELS.items():
        mode_cases = [case for case in cases if report.case_mode(case) == mode]
        if not mode_cases:
            continue
        servers = []
        for case in mode_cases:
            for label in (case.get("summary") or {}):
                if label not in servers:
                    servers.append(label)
        values = {
            label: [((case.get("summary") or {}).get(label) or {}).get(field) for case in mode_cases]
            for label in servers
        }
        values = {label: vals for label, vals in values.items() if any(v is not None for v in vals)}
        if values:
            out.append((mode, field, ylabel, title, [_case_label(c) for c in mode_cases], values))
    return out


def _value_text(value):
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def draw(results, path):
    """Write the chart of ``results`` to ``path`` (PNG, or what its suffix says).

    Raises :class:`PlotUnavailable` without matplotlib, and ValueError when
    the results hold no figure to draw.
    """
    why = unavailable()
    if why:
        raise PlotUnavailable(why)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = panels(results)
    if not drawn:
        raise ValueError("no CPU figures to draw in these results")
    widest = max(len(labels) * (len(values) + 1) for _, _, _, _, labels, values in drawn)
    # One colour per server, the same in every panel; one legend for all.
    servers = list(dict.fromkeys(label for panel in drawn for label in panel[5]))
    palette = [f"C{i % 10}" for i in range(len(servers))]
    colour = dict(zip(servers, palette))
    fig = Figure(figsize=(max(7.0, 0.3 * widest + 2.5), 3.8 * len(drawn) + 1.2))
    FigureCanvasAgg(fig)
    machine = results.get("machine", {})
    fig.suptitle(
        f"pike bench: server CPU time, lower is better (pike {machine.get('pike_version', '?')}, "
        f"Python {machine.get('python', '?')}, {machine.get('cpu_count', '?')} CPUs)"
    )
    handles = {}
    for index, (mode, _field, ylabel, title, labels, values) in enumerate(drawn):
        ax = fig.add_subplot(len(drawn), 1, index + 1)
        count = len(values)
        width = 0.8 / count
        for k, (server, vals) in enumerate(values.items()):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(labels))]
            heights = [v if v is not None else 0.0 for v in vals]
            bars = ax.bar(xs, heights, width=width, label=server, color=colour[server])
            handles.setdefault(server, bars)
            if hasattr(ax, "bar_label"):  # matplotlib >= 3.4
                ax.bar_label(
                    bars, labels=[_value_text(v) for v in vals],
                    fontsize="x-small", padding=1,
                )
        ax.set_xticks(list(range(len(labels))))
        ax.set_xticklabels(labels)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    fig.legend(
        [handles[s] for s in servers], servers, loc="lower center",
        ncol=min(len(servers), 5), fontsize="small", frameon=False,
    )
    rows = -(-len(servers) // 5)
    fig.tight_layout(rect=(0, 0.03 + 0.025 * rows, 1, 0.96))
    fig.savefig(path, dpi=110)
    return path
