"""Bounds on a pickle, checked before it is unpickled.

Why: unpickling itself is iterative, but it hashes dict keys, set and
frozenset items as it builds them, and hashing a tuple recurses in C with
no recursion guard. A frame of a few MiB can hold a tuple nested millions
deep, and hashing it overflows the C stack: the process dies, no exception
to catch. So the nesting is measured on the opcodes, without building
anything, and a pickle nested deeper than the limit is refused.

The walk simulates the unpickler's stack, keeping for each item how deep
the object it stands for is nested. A mutable container (list, dict, set,
an object being built) keeps its depth in a cell shared with the memo, so
that items appended through a memo reference count too. The depth of what
a callable returns (REDUCE, NEWOBJ, ...) is taken as one more than its
arguments; a peer that may run code can do worse anyway.

:func:`check_nesting` also refuses what the unpickler would refuse
(an unknown opcode, a stack underflow, a memo key never stored), with a
clear message instead of whatever a half-built object would raise.
"""

import pickle
import pickletools
import struct

__all__ = ["DEFAULT_MAX_NESTING", "NestingError", "check_nesting"]

#: How deep containers may nest in one message by default.
DEFAULT_MAX_NESTING = 200


class NestingError(pickle.UnpicklingError):
    """A pickle that is malformed or nested deeper than allowed."""


# What each opcode does to the simulated stack.
(_PUSH, _PUSH_CELL, _MARK, _FROM_MARK, _FROM_MARK_CELL, _POP_N, _POP_N_CELL,
 _ADD_N, _ADD_MARK, _POP, _POP_MARK, _DUP, _PUT, _MEMOIZE, _GET, _NONE,
 _STOP) = range(17)

_ACTIONS = {
    # a fresh immutable value, or a container to be filled in place
    "EMPTY_LIST": _PUSH_CELL, "EMPTY_DICT": _PUSH_CELL, "EMPTY_SET": _PUSH_CELL,
    "MARK": _MARK,
    "TUPLE": _FROM_MARK, "FROZENSET": _FROM_MARK,
    "LIST": _FROM_MARK_CELL, "DICT": _FROM_MARK_CELL, "INST": _FROM_MARK_CELL,
    "OBJ": _FROM_MARK_CELL,
    "TUPLE1": (_POP_N, 1), "TUPLE2": (_POP_N, 2), "TUPLE3": (_POP_N, 3),
    "STACK_GLOBAL": (_POP_N, 2), "BINPERSID": (_POP_N, 1),
    "READONLY_BUFFER": (_POP_N, 1),
    "REDUCE": (_POP_N_CELL, 2), "NEWOBJ": (_POP_N_CELL, 2), "NEWOBJ_EX": (_POP_N_CELL, 3),
    "APPEND": (_ADD_N, 1), "SETITEM": (_ADD_N, 2), "BUILD": (_ADD_N, 1),
    "APPENDS": _ADD_MARK, "SETITEMS": _ADD_MARK, "ADDITEMS": _ADD_MARK,
    "POP": _POP, "POP_MARK": _POP_MARK, "DUP": _DUP,
    "PUT": _PUT, "BINPUT": _PUT, "LONG_BINPUT": _PUT, "MEMOIZE": _MEMOIZE,
    "GET": _GET, "BINGET": _GET, "LONG_BINGET": _GET,
    "PROTO": _NONE, "FRAME": _NONE,
    "STOP": _STOP,
}

# How to step over an opcode's argument: a fixed size, one or two lines,
# or a length prefix of 1, 4 or 8 bytes.
_LINE, _TWO_LINES = -1, -10
_LENGTH_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: struct.Struct("<B"),
    pickletools.TAKEN_FROM_ARGUMENT4: struct.Struct("<i"),
    pickletools.TAKEN_FROM_ARGUMENT4U: struct.Struct("<I"),
    pickletools.TAKEN_FROM_ARGUMENT8U: struct.Struct("<Q"),
}
_MEMO_KEY = {1: struct.Struct("<B"), 4: struct.Struct("<I")}


def _table():
    table = [None] * 256
    for op in pickletools.opcodes:
        arg = op.arg
        if arg is None:
            step = 0
        elif arg.name == "stringnl_noescape_pair":
            step = _TWO_LINES
        elif arg.n == pickletools.UP_TO_NEWLINE:
            step = _LINE
        elif arg.n >= 0:
            step = arg.n
        else:
            step = _LENGTH_PREFIX[arg.n]
        action = _ACTIONS.get(op.name, _PUSH)  # the rest push one new value
        action, count = action if type(action) is tuple else (action, 0)
        table[ord(op.code)] = (op.name, step, action, count)
    return table


_TABLE = _table()


def _skip_line(body, pos):
    end = body.find(b"\n", pos)
    if end < 0:
        raise NestingError("a pickle cut short")
    return end + 1


def check_nesting(body, max_depth=DEFAULT_MAX_NESTING):
    """Raise :exc:`NestingError` when the containers of the pickle ``body``
    nest deeper than ``max_depth``, or when the walk finds it malformed.

    Runs in time linear in ``len(body)``, and builds no object of the
    pickle. A body of at most ``max_depth`` bytes is let through unread
    (the unpickler still checks its form): every level of nesting takes an
    opcode of its own, so it cannot nest deeper. Most messages are that short.
    """
    body = bytes(body)
    size = len(body)
    if 0 < size <= max_depth:
        return
    stack = []   # per item: an int depth, or a one-item list (a shared cell)
    marks = []   # stack lengths at each MARK
    memo = {}
    pos = 0
    while pos < size:
        entry = _TABLE[body[pos]]
        if entry is None:
            raise NestingError(f"unknown pickle opcode 0x{body[pos]:02x} at {pos}")
        name, step, action, count = entry
        start = pos + 1
        if type(step) is int:
            if step >= 0:
                pos = start + step
                if action == _PUSH and pos <= size:  # the common case, first
                    stack.append(0)
                    continue
            elif step == _LINE:
                pos = _skip_line(body, start)
            else:
                pos = _skip_line(body, _skip_line(body, start))
        else:
            if start + step.size > size:
                raise NestingError("a pickle cut short")
            (length,) = step.unpack_from(body, start)
            if length < 0:
                raise NestingError(f"a negative length in {name}")
            pos = start + step.size + length
        if pos > size:
            raise NestingError("a pickle cut short")

        if action == _PUSH:
            stack.append(0)
            continue
        if action == _GET:
            stack.append(_memo_get(memo, body, name, start, pos))
            continue
        if action == _PUT:
            if not stack:
                raise NestingError(f"{name} on an empty stack")
            memo[_memo_key(body, name, start, pos)] = stack[-1]
            continue
        if action == _MEMOIZE:
            if not stack:
                raise NestingError("MEMOIZE on an empty stack")
            memo[len(memo)] = stack[-1]
            continue
        if action == _PUSH_CELL:
            stack.append([0])
            continue
        if action == _MARK:
            marks.append(len(stack))
            continue
        if action == _NONE:
            continue
        if action == _STOP:
            if len(stack) != 1 or marks:
                raise NestingError("a pickle that does not end with one object")
            if pos != size:
                raise NestingError("bytes after the end of the pickle")
            return
        if action in (_FROM_MARK, _FROM_MARK_CELL, _ADD_MARK, _POP_MARK):
            if not marks:
                raise NestingError(f"{name} without a MARK")
            at = marks.pop()
            items = stack[at:]
            del stack[at:]
        elif action == _POP:
            if marks and marks[-1] == len(stack):
                marks.pop()
                continue
            if not stack:
                raise NestingError("POP on an empty stack")
            stack.pop()
            continue
        elif action == _DUP:
            if not stack:
                raise NestingError("DUP on an empty stack")
            stack.append(stack[-1])
            continue
        else:  # _POP_N, _POP_N_CELL, _ADD_N
            if len(stack) - (marks[-1] if marks else 0) < count:
                raise NestingError(f"{name} on a stack too short")
            items = stack[-count:]
            del stack[-count:]
        if action == _POP_MARK:
            continue
        depth = 1
        for item in items:
            below = item[0] if type(item) is list else item
            if below >= depth:
                depth = below + 1
        if depth > max_depth:
            raise NestingError(f"a pickle nested deeper than {max_depth}")
        if action == _ADD_MARK or action == _ADD_N:
            if len(stack) - (marks[-1] if marks else 0) < 1:
                raise NestingError(f"{name} with nothing to add to")
            target = stack[-1]
            if type(target) is list:
                if depth > target[0]:
                    target[0] = depth
            elif depth > target:
                stack[-1] = depth
        elif action == _FROM_MARK_CELL or action == _POP_N_CELL:
            stack.append([depth])
        else:
            stack.append(depth)
    raise NestingError("a pickle without STOP")


def _memo_key(body, name, start, end):
    if name in ("PUT", "GET"):
        text = body[start:end - 1]
        try:
            return int(text)
        except ValueError:
            raise NestingError(f"a bad memo key {text[:20]!r} in {name}") from None
    return _MEMO_KEY[end - start].unpack_from(body, start)[0]


def _memo_get(memo, body, name, start, end):
    key = _memo_key(body, name, start, end)
    try:
        return memo[key]
    except KeyError:
        raise NestingError(f"{name} of memo key {key}, never stored") from None
