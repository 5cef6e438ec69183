"""The framing layer's scanning, with Python's own tools.

* Splitting a received chunk of 100 lines on ``b"\\r\\n"``: ``bytes.split``
  and a ``bytes.find`` loop. Each returns the complete lines and the
  unterminated rest.
* Length-prefixed frames (100 frames, 4-byte big-endian lengths): a
  ``struct.unpack_from`` loop.
* The bytes of a 16-byte terminator that may continue in the next read
  (the longest proper prefix of it that the buffer ends with): a Python
  loop of ``endswith``.

These need no socket and do not depend on the implementation chosen. C
scanners for the same jobs were built and measured against these, and left
the build (docs/accelerator.rst says why).
"""

import random
import struct

import pytest

TERMINATOR = b"\r\n"
LINES = b"".join(b"line %03d: %s\r\n" % (i, b"x" * (i % 37)) for i in range(100))
CHUNK = LINES + b"partial line, no end"
MAX_ITEMS = 1024


def expected_lines():
    *lines, rest = CHUNK.split(TERMINATOR)
    return lines, rest


# -- splitting lines ---------------------------------------------------------------


def split_with_split(chunk):
    *lines, rest = chunk.split(TERMINATOR)
    return lines, rest


def split_with_find(chunk):
    lines = []
    find = chunk.find
    step = len(TERMINATOR)
    start = 0
    while True:
        end = find(TERMINATOR, start)
        if end < 0:
            return lines, chunk[start:]
        lines.append(chunk[start:end])
        start = end + step


def test_split_lines_bytes_split(benchmark):
    assert benchmark(split_with_split, CHUNK) == expected_lines()


def test_split_lines_find_loop(benchmark):
    assert benchmark(split_with_find, CHUNK) == expected_lines()


# -- length-prefixed frames ----------------------------------------------------------

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20
_rng = random.Random(7)
PAYLOADS = [bytes([i]) * _rng.randrange(0, 80) for i in range(100)]
FRAMES = b"".join(HEADER.pack(len(p)) + p for p in PAYLOADS) + HEADER.pack(50) + b"half"


def frames_with_struct(buf):
    out = []
    unpack_from = HEADER.unpack_from
    size_of_header = HEADER.size
    start = 0
    length = len(buf)
    while length - start >= size_of_header:
        (size,) = unpack_from(buf, start)
        if size > MAX_FRAME:
            raise ValueError("frame too large")
        end = start + size_of_header + size
        if end > length:
            break
        out.append(buf[start + size_of_header : end])
        start = end
    return out, start


def test_length_frames_struct_loop(benchmark):
    out, used = benchmark(frames_with_struct, FRAMES)
    assert out == PAYLOADS and used == len(FRAMES) - 8


# -- a terminator split across reads -------------------------------------------------

LONG_TERMINATOR = b"--boundary-7f3a\n"  # 16 bytes
assert len(LONG_TERMINATOR) == 16
TAILS = {
    "none": b"y" * 4096,  # the common case: every proper prefix is tried
    "partial": b"y" * 4088 + LONG_TERMINATOR[:8],
}
EXPECTED_PREFIX = {"none": 0, "partial": 8}


def prefix_at_end_python(hay, needle):
    for size in range(len(needle) - 1, 0, -1):
        if hay.endswith(needle[:size]):
            return size
    return 0


@pytest.mark.parametrize("tail", list(TAILS))
def test_prefix_at_end_python(benchmark, tail):
    result = benchmark(prefix_at_end_python, TAILS[tail], LONG_TERMINATOR)
    assert result == EXPECTED_PREFIX[tail]
