"""The framing layer's scanning: Python's own tools against the C scanners.

* Splitting a received chunk of 100 lines on ``b"\\r\\n"``: ``bytes.split``,
  a ``bytes.find`` loop, and ``pike_find_all`` (one C call for every line
  end, then slicing in Python). Each returns the complete lines and the
  unterminated rest.
* Length-prefixed frames (100 frames, 4-byte big-endian lengths): a
  ``struct.unpack_from`` loop against ``pike_scan_lengths``.
* The bytes of a 16-byte terminator that may continue in the next read
  (the longest proper prefix of it that the buffer ends with): a Python
  loop of ``endswith`` against ``pike_prefix_at_end``.

These need no socket and do not depend on the implementation chosen; the
C rows skip when the accelerator is not built.
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


def make_split_with_c(ffi, lib):
    ends = ffi.new("long[]", MAX_ITEMS)
    find_all = lib.pike_find_all
    unpack = ffi.unpack
    step = len(TERMINATOR)

    def split_with_c(chunk):
        lines = []
        start = 0
        while True:
            count = find_all(chunk, len(chunk), start, TERMINATOR, step, ends, MAX_ITEMS)
            for end in unpack(ends, count):
                lines.append(chunk[start : end - step])
                start = end
            if count < MAX_ITEMS:
                return lines, chunk[start:]

    return split_with_c


def test_split_lines_bytes_split(benchmark):
    assert benchmark(split_with_split, CHUNK) == expected_lines()


def test_split_lines_find_loop(benchmark):
    assert benchmark(split_with_find, CHUNK) == expected_lines()


def test_split_lines_c_find_all(benchmark, accel):
    assert benchmark(make_split_with_c(*accel), CHUNK) == expected_lines()


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


def make_frames_with_c(ffi, lib):
    ends = ffi.new("long[]", MAX_ITEMS)
    scan = lib.pike_scan_lengths
    unpack = ffi.unpack
    size_of_header = HEADER.size

    def frames_with_c(buf):
        out = []
        start = 0
        while True:
            count = scan(buf, len(buf), start, size_of_header, 0, MAX_FRAME, ends, MAX_ITEMS)
            if count < 0:
                raise ValueError("frame too large")
            for end in unpack(ends, count):
                out.append(buf[start + size_of_header : end])
                start = end
            if count < MAX_ITEMS:
                return out, start

    return frames_with_c


def test_length_frames_struct_loop(benchmark):
    out, used = benchmark(frames_with_struct, FRAMES)
    assert out == PAYLOADS and used == len(FRAMES) - 8


def test_length_frames_c_scan_lengths(benchmark, accel):
    out, used = benchmark(make_frames_with_c(*accel), FRAMES)
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


@pytest.mark.parametrize("tail", list(TAILS))
def test_prefix_at_end_c(benchmark, accel, tail):
    ffi, lib = accel
    c_prefix = lib.pike_prefix_at_end

    def prefix_at_end_c(hay, needle):
        return c_prefix(hay, len(hay), needle, len(needle))

    result = benchmark(prefix_at_end_c, TAILS[tail], LONG_TERMINATOR)
    assert result == EXPECTED_PREFIX[tail]
