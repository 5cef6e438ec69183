"""Who gets in: caps on connections that have not authenticated yet, and a
log that stays bounded while a flood is turned away.

Why evict the oldest: a client that holds the key authenticates within a
round trip of connecting, while the connections of a keyless flood sit
idle until the auth timeout drops them. Refusing newcomers at the cap would
hand every slot to the flood (and lock out a client on the flood's own
address); closing the oldest pending connection keeps the newest, which is
where a real login is. The per-peer cap keeps one address from taking the
global slots, so clients elsewhere never need to evict anyone.
"""

import collections
import time

__all__ = ["DEFAULT_MAX_PENDING", "DEFAULT_MAX_PENDING_PER_PEER", "DEFAULT_MAX_SESSIONS",
           "DropLog", "PendingConnections", "peer_of"]

#: Authenticated sessions at once, by default.
DEFAULT_MAX_SESSIONS = 64
#: Connections still authenticating at once, by default.
DEFAULT_MAX_PENDING = 32
#: Connections still authenticating from one peer address, by default.
DEFAULT_MAX_PENDING_PER_PEER = 8


def peer_of(addr):
    """The address whose pending connections count together: the host."""
    if isinstance(addr, tuple) and addr:
        return addr[0]
    return addr if isinstance(addr, (str, bytes)) else repr(addr)


class PendingConnections:
    """The connections that have not authenticated yet, oldest first.

    :meth:`add` returns the connections to close to keep within ``limit``
    in all and ``per_peer`` per peer; the caller closes them (which calls
    :meth:`discard`).
    """

    def __init__(self, limit, per_peer):
        if limit < 1 or per_peer < 1:
            raise ValueError("pending-connection limits must be at least 1")
        self.limit = limit
        self.per_peer = per_peer
        self._peers = {}                 # peer -> OrderedDict of its connections
        self._count = 0

    def __len__(self):
        return self._count

    def count(self, peer):
        """How many connections of ``peer`` are pending."""
        return len(self._peers.get(peer, ()))

    def add(self, connection, peer):
        """Take ``connection`` of ``peer`` in; returns the ones to evict."""
        evict = []
        mine = self._peers.get(peer)
        if mine is not None and len(mine) >= self.per_peer:
            evict.append(self._pop_oldest(peer))
        elif self._count >= self.limit:
            # the peer with the most pending connections gives one up
            busiest = max(self._peers, key=lambda key: len(self._peers[key]))
            evict.append(self._pop_oldest(busiest))
        self._peers.setdefault(peer, collections.OrderedDict())[connection] = None
        self._count += 1
        return evict

    def discard(self, connection, peer):
        """Forget ``connection`` (authenticated or closed); no error if unknown."""
        mine = self._peers.get(peer)
        if mine is not None and mine.pop(connection, 0) is None:
            self._count -= 1
            if not mine:
                del self._peers[peer]

    def _pop_oldest(self, peer):
        mine = self._peers[peer]
        connection, _ = mine.popitem(last=False)
        self._count -= 1
        if not mine:
            del self._peers[peer]
        return connection


class DropLog:
    """Log turned-away connections without letting a flood flood the log.

    In each ``interval`` the first drop of each reason is logged in full;
    the others are counted, and the counts logged in one line when the next
    interval begins (or at :meth:`flush`). So a flood costs at most a few
    lines per interval, and a lone failure is still logged as it happens.
    """

    def __init__(self, logger, interval=10.0, clock=time.monotonic):
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self._started = None
        self._seen = collections.Counter()      # reason -> drops this interval
        #: Drops since the start, by reason.
        self.totals = collections.Counter()

    def note(self, reason, level, message, *args):
        """Record one drop; log ``message % args`` if it is the first of its reason."""
        now = self._clock()
        if self._started is None or now - self._started >= self.interval:
            self.flush()
            self._started = now
        self.totals[reason] += 1
        self._seen[reason] += 1
        if self._seen[reason] == 1:
            self._logger.log(level, message, *args)

    def flush(self):
        """Log the drops not logged one by one, as a count per reason."""
        unlogged = {reason: n - 1 for reason, n in self._seen.items() if n > 1}
        self._seen.clear()
        if unlogged:
            summary = ", ".join(f"{n} {reason}" for reason, n in sorted(unlogged.items()))
            self._logger.warning("spiro: also turned away: %s", summary)
