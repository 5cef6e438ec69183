"""Tests of the default ``python -m pike bench``: the headline run and its one table.

The default run must stay short (its plan is checked, not its speed), show
the headline servers, print one table with a sentence made from the
figures, and say why pike's C accelerator is not in use when it is not.
"""

import os
import subprocess
import sys

import pytest

import pike
from pike.bench import cli, headline, processes, runner, servers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIKE_KIND = f"pike-{pike.available_pollers()[0]}"


def test_headline_servers():
    labels = [s.label for s in cli.headline_servers(["python", "c"], True)]
    expected = [f"{PIKE_KIND}:c", f"{PIKE_KIND}:python", "asyncio"]
    if "uvloop" in servers.available_kinds(native=False):
        expected.append("uvloop")
    assert labels == expected + ["c-ref"]
    labels = [s.label for s in cli.headline_servers(["python"], False)]
    assert labels[0] == f"{PIKE_KIND}:python" and "c-ref" not in labels


def _plan(monkeypatch, argv, impls=(["python", "c"], None)):
    """Run cli.main up to the benchmark; return (settings, notes)."""
    captured = {}

    def fake_run(settings, progress=None, skipped=None, notes=None):
        captured.update(settings=settings, notes=list(notes or []))
        raise KeyboardInterrupt  # stop before any process starts

    monkeypatch.setattr(processes, "probe_implementations", lambda *a, **k: impls)
    monkeypatch.setattr(runner, "run_benchmark", fake_run)
    assert cli.main(argv) == 130
    return captured["settings"], captured["notes"]


def test_default_plan_is_short(monkeypatch):
    settings, _ = _plan(monkeypatch, [])
    assert settings.modes == ["pingpong"]
    assert [(c["connections"], c["size"]) for c in settings.cases()] == [(10, 1024), (100, 1024)]
    assert settings.repeat == cli.HEADLINE["repeat"]
    labels = [s.label for s in settings.servers]
    assert labels[:3] == [f"{PIKE_KIND}:c", f"{PIKE_KIND}:python", "asyncio"]
    # The plan (windows plus start-up per run) fits the 90 s promise with room.
    assert settings.estimated_seconds() <= 75


def test_quick_and_full_plans(monkeypatch):
    quick, _ = _plan(monkeypatch, ["--quick"])
    full, _ = _plan(monkeypatch, ["--full"])
    assert quick.repeat == 1 and len(quick.cases()) == 2
    assert len(quick.servers) > 5  # every server available
    assert full.repeat == 3 and len(full.cases()) == 9
    assert [s.label for s in full.servers] == [s.label for s in quick.servers]
    with pytest.raises(SystemExit):
        cli.main(["--quick", "--full"])


def test_note_says_why_c_is_not_used(monkeypatch, capsys):
    why = "the C accelerator (pike._pike_accel) is not built; reinstall with a compiler"
    settings, notes = _plan(monkeypatch, [], impls=(["python"], why))
    assert [s.impl for s in settings.servers if s.kind == PIKE_KIND] == ["python"]
    assert any(why in note for note in notes)
    assert why in capsys.readouterr().err


def test_probe_matches_the_accelerator():
    impls, problem = processes.probe_implementations()
    assert (problem is None) == ("c" in impls)
    code = "import pike; print(pike.IMPLEMENTATION)"
    out = subprocess.run([sys.executable, "-c", code], env=processes.child_env({"PIKE_IMPL": "auto"}),
                         capture_output=True, text=True, timeout=60).stdout.strip()
    assert ("c" in impls) == (out == "c")


def _case(connections, rows):
    case = {"mode": "pingpong", "connections": connections, "size": 1024, "runs": []}
    for label, impl, cpu in rows:
        case["runs"].append({
            "server": label, "mode": "pingpong", "rps": 1e6 / cpu, "server_cpu_us_per_req": cpu,
            "latency_us": {"p50": 10, "p90": 20, "p99": 30}, "server_info": {"implementation": impl},
            "server_cpu_source": "proc", "round": 1,
        })
    from pike.bench import report

    report.summarize_case(case)
    return case


def test_headline_table_and_its_sentence():
    rows = [(f"{PIKE_KIND}:c", "c", 8.0), (f"{PIKE_KIND}:python", "python", 10.0),
            ("asyncio", None, 40.0), ("c-ref", "c", 4.0)]
    results = {
        "settings": {"repeat": 2, "duration_s": 2.0, "baseline": "asyncio", "modes": ["pingpong"]},
        "machine": {"python": "3.x"},
        "cases": [_case(10, rows), _case(100, rows[:2] + [("asyncio", None, 20.0), ("c-ref", "c", 2.0)])],
        "notes": ["a note"],
        "elapsed_s": 12.0,
    }
    text = headline.format_headline(results)
    assert text.count("CPU ") >= 2 and "10 conn x 1 KiB" in text and "100 conn x 1 KiB" in text
    table = [line for line in text.splitlines() if line.startswith((PIKE_KIND, "asyncio", "c-ref"))]
    assert len(table) == 4  # one row per server, both cases side by side
    assert "2.00x" in table[0] and "0.20x" in table[0]  # 8/4 and 8/40
    assert "4.00x" in table[0] and "0.40x" in table[0]  # 8/2 and 8/20
    sentence = next(line for line in text.splitlines() if line.startswith("What it means"))
    assert "on C 2.00x and 0.20x at 10 connections, 4.00x and 0.40x at 100 connections" in sentence
    assert "pure-Python path 2.50x and 0.25x at 10 connections" in sentence
    assert "a note" in text and "--full" in text


def test_sentence_without_figures():
    case = _case(10, [("asyncio", None, 40.0)])
    assert "no ratio could be formed" in headline.meaning([case])


def test_default_run_prints_one_table():
    """The default plan on tiny windows, for real: the headline table comes out."""
    cmd = [sys.executable, "-m", "pike", "bench", "--duration", "0.3", "--warmup", "0.05",
           "--repeat", "1", "--loadgen", "python"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=processes.child_env())
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    assert "What it means" in out and "10 conn x 1 KiB" in out and "100 conn x 1 KiB" in out
    assert out.count("ping-pong echo") == 1  # one table, not one per case
    for label in (f"{PIKE_KIND}:python", "asyncio"):
        assert any(line.startswith(label) for line in out.splitlines())
    assert "[1/" in proc.stderr
