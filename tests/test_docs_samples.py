"""Every Python sample of README.md and docs/*.rst runs, so none can go stale.

The rule, for whoever writes documentation:

* **What runs.** A fenced block tagged ``python`` (or ``py``) in README.md;
  a ``.. code-block:: python`` (``.. code::`` and ``.. sourcecode::`` too;
  ``python``, ``python3`` or ``py``) in any ``docs/*.rst`` page, new pages
  included (the pages are globbed). Each runs on its own, as a script
  (``__name__ == "__main__"``), in a subprocess in an empty temporary
  directory, with the pike under test importable and ``PIKE_IMPL`` passed
  on; it must exit with status 0 within :data:`TIMEOUT` seconds.
* **What does not run.** Blocks tagged as something else (``console``,
  ``text``, ``shell``...), indented Markdown blocks, and reST ``::``
  literal blocks: these are commands and output. A ``::`` block (or an
  untagged fence) that parses as Python statements is an error, though: tag
  it ``python`` so that it runs, or ``text`` if it is not meant to.
* **Markers.** A comment on the last non-blank line before a block changes
  how it runs: ``.. pike-sample: KIND`` in reST (a comment, not shown in the
  built docs), ``<!-- pike-sample: KIND -->`` in Markdown. KIND is one of

  ``skip REASON``
      not run; the reason is required (say what it needs that a test
      cannot give it, such as a server started by hand);
  ``continue``
      a fragment that needs the page's previous Python block: it runs after
      that block, concatenated with it (and with what that one continued);
  ``server``
      a server that runs until it is stopped: it must still be running
      after :data:`SERVER_GRACE` seconds (or have exited with status 0),
      and is then stopped with SIGINT.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
    [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "*.rst"))
)
#: Seconds a sample may take.
TIMEOUT = 60.0
#: Seconds a ``server`` sample must keep running to pass.
SERVER_GRACE = 3.0

PYTHON_TAGS = {"python", "python3", "py"}
MARKER = re.compile(r"^\s*(?:\.\.\s+pike-sample:\s*(.*?)|<!--\s*pike-sample:\s*(.*?)\s*-->)\s*$")
RST_CODE = re.compile(r"^(\s*)\.\.\s+(?:code-block|code|sourcecode)::\s*(\S*)\s*$")
RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+\S+::")
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)")


@dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # 1-based line of the directive or fence
    language: str  # "python", another tag, or "" (a literal block)
    code: str
    marker: str  # "" when none

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def is_python(self) -> bool:
        return self.language in PYTHON_TAGS


def _marker_before(lines: list[str], index: int) -> str:
    """The pike-sample marker on the last non-blank line before ``index``."""
    for i in range(index - 1, -1, -1):
        if lines[i].strip():
            match = MARKER.match(lines[i])
            return (match.group(1) or match.group(2) or "").strip() if match else ""
    return ""


def _indented_body(lines: list[str], start: int, indent: int) -> tuple[str, int]:
    """The block of lines from ``start`` indented deeper than ``indent``."""
    body = []
    i = start
    while i < len(lines):
        line = lines[i]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
        i += 1
    return textwrap.dedent("\n".join(body)).strip("\n") + "\n", i


def _option_lines_end(lines: list[str], start: int) -> int:
    """Skip a directive's ``:option:`` lines."""
    i = start
    while i < len(lines) and re.match(r"^\s+:[\w-]+:", lines[i]):
        i += 1
    return i


def rst_blocks(page: str, text: str) -> list[Block]:
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        line = lines[i]
        code = RST_CODE.match(line)
        if code:  # .. code-block:: LANGUAGE, its options, then the body
            language = code.group(2).lower()
            indent, start = len(code.group(1)), _option_lines_end(lines, i + 1)
        elif line.rstrip().endswith("::") and not RST_DIRECTIVE.match(line):
            language = ""  # a paragraph ending in "::": a literal block
            indent, start = len(line) - len(line.lstrip()), i + 1
        else:
            i += 1
            continue
        body, end = _indented_body(lines, start, indent)
        blocks.append(Block(page, i + 1, language, body, _marker_before(lines, i)))
        i = end
    return blocks


def markdown_blocks(page: str, text: str) -> list[Block]:
    lines = text.splitlines()
    blocks = []
    opened = None  # (index, fence, language) of the fenced block being read
    for i, line in enumerate(lines):
        if opened is None:
            fence = FENCE.match(line)
            if fence:
                opened = (i, fence.group(2), fence.group(3).lower())
        elif line.strip().startswith(opened[1]):
            start, _, language = opened
            body = textwrap.dedent("\n".join(lines[start + 1 : i])).strip("\n") + "\n"
            blocks.append(Block(page, start + 1, language, body, _marker_before(lines, start)))
            opened = None
    return blocks


def all_blocks() -> list[Block]:
    blocks = []
    for path in PAGES:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        page = os.path.relpath(path, ROOT)
        parse = markdown_blocks if path.endswith(".md") else rst_blocks
        blocks.extend(parse(page, text))
    return blocks


def runnable_samples() -> list[tuple[Block, str]]:
    """(block, program) for each Python block to run; ``continue`` chains."""
    samples = []
    previous: dict[str, str] = {}  # page -> program of its last Python block
    for block in all_blocks():
        if not block.is_python:
            continue
        kind = block.marker.split(None, 1)[0] if block.marker else ""
        program = block.code
        if kind == "continue":
            program = previous.get(block.page, "") + "\n" + block.code
        previous[block.page] = program
        samples.append((block, program))
    return samples


SAMPLES = runnable_samples()


def _write(program: str, cwd: str) -> str:
    path = os.path.join(cwd, "sample.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(program)
    return path


def _run(program: str, cwd: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = _write(program, cwd)
    return subprocess.run(
        [sys.executable, path],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _serve(program: str, cwd: str, env: dict[str, str]) -> tuple[int | None, str]:
    """Run a server sample; (exit status or None if still running, stderr)."""
    path = _write(program, cwd)
    proc = subprocess.Popen(
        [sys.executable, path],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            proc.wait(SERVER_GRACE)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=TIMEOUT)
            return None, ""
        return proc.returncode, proc.communicate(timeout=TIMEOUT)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_pages_have_python_samples():
    pages = {block.page for block, _ in SAMPLES}
    assert "README.md" in pages, "the README's server-and-client sample was not found"
    assert len(SAMPLES) >= 5, [block.name for block, _ in SAMPLES]


@pytest.mark.parametrize("block, program", SAMPLES, ids=[block.name for block, _ in SAMPLES])
def test_sample_runs(block, program, tmp_path, pike_env):
    kind, _, reason = block.marker.partition(" ")
    if kind == "skip":
        assert reason.strip(), f"{block.name}: 'pike-sample: skip' needs a reason"
        pytest.skip(f"{block.name}: {reason.strip()}")
    assert kind in ("", "continue", "server"), f"{block.name}: unknown marker {block.marker!r}"
    if kind == "server":
        status, stderr = _serve(program, str(tmp_path), pike_env)
        assert status in (None, 0), f"{block.name} exited with status {status}:\n{stderr}"
        return
    result = _run(program, str(tmp_path), pike_env)
    assert result.returncode == 0, (
        f"{block.name} exited with status {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )


def _parses_as_statements(code: str) -> bool:
    """True for Python with at least one statement that is not a bare name."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(not isinstance(node, ast.Expr) for node in tree.body)


def test_every_python_looking_block_is_tagged():
    """A literal block that is Python must say so (and then it runs)."""
    untagged = [
        block.name
        for block in all_blocks()
        if block.language == "" and _parses_as_statements(block.code)
    ]
    assert not untagged, (
        "these literal blocks parse as Python: make them '.. code-block:: python' "
        f"(with a pike-sample marker if they cannot run alone) or 'text': {untagged}"
    )


# -- the extractor itself ------------------------------------------------------


def test_rst_extraction_and_markers():
    text = textwrap.dedent(
        """\
        Intro::

            $ python -m pike info

        .. pike-sample: skip needs a server started by hand

        .. code-block:: python
           :caption: one

           x = 1
           if x:
               print(x)

        After.

        .. code-block:: console

           $ ls
        """
    )
    blocks = rst_blocks("p.rst", text)
    assert [(b.line, b.language, b.marker) for b in blocks] == [
        (1, "", ""),
        (7, "python", "skip needs a server started by hand"),
        (16, "console", ""),
    ]
    assert blocks[0].code == "$ python -m pike info\n"
    assert blocks[1].code == "x = 1\nif x:\n    print(x)\n"


def test_markdown_extraction_and_markers():
    text = "Run:\n\n    pip install .\n\n<!-- pike-sample: continue -->\n```python\nprint(1)\n```\n\n```text\nout\n```\n"
    blocks = markdown_blocks("README.md", text)
    assert [(b.line, b.language, b.marker, b.code) for b in blocks] == [
        (6, "python", "continue", "print(1)\n"),
        (10, "text", "", "out\n"),
    ]


def test_statements_are_told_from_commands():
    assert _parses_as_statements("def f(self):\n    return 1\n")
    assert not _parses_as_statements("python -m pytest -q\n")
    assert not _parses_as_statements("$ python -m pike bench --mode callgrind-io\n")
    assert not _parses_as_statements("pytest\n")
