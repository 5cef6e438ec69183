# Type hints for the C accelerator, csrc/ (built by setup.py; optional).
from typing import List, Optional, Tuple, Union


_Buffer = Union[bytes, bytearray, memoryview]

def send_now(sock: object, data: _Buffer) -> int: ...
def send_rest(sock: object, data: _Buffer) -> int: ...

# Linux only (epoll).
NOT_RECEIVED: int
RECEIVE_BUDGET: int
MIN_RECEIVE: int

def epoll_collect(
    epfd: int, receive_sizes: List[int], read_events: int
) -> Optional[
    Tuple[Optional[List[Tuple[int, bytes]]], Optional[List[Tuple[int, int, int]]]]
]: ...
