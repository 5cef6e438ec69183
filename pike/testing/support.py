"""Small helpers the checks share.
"""

import random
import socket

from .recording import (
    transport_and_peer,
)
from .sockets import (
    AF_INET,
    AF_UNIX,
)


def _stream_families():
    families = [AF_INET]
    if AF_UNIX is not None:
        families.append(AF_UNIX)
    return families


def _closing(stack, *objs):
    for obj in objs:
        stack.callback(obj.close)
    return objs[0] if len(objs) == 1 else objs


def _pattern(size, seed=0):
    return random.Random(seed).randbytes(size)


def _stalled_pair(poller, stack):
    t, peer = _closing(stack, *transport_and_peer(poller))
    t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return t, peer
