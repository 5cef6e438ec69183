"""Servers on pike's pollers.

Two levels, for two kinds of application:

* the socketserver model (:mod:`pike.server.socketserver`, re-exported here):
  ``TCPServer``, ``UDPServer``, the Unix servers, the threading and forking
  mix-ins and the request handlers, with the standard library's behaviour,
  each server waiting for requests on a private pike poller;
* the event-driven :class:`~pike.server.listener.Listener`, which accepts on
  a poller shared by thousands of connections and makes one
  :class:`~pike.transport.Transport` per connection, and
  :class:`~pike.server.workers.WorkerPool`, which runs such a listener in N
  supervised processes on one port.

Nothing here creates a kernel object at import time.
"""

from .echo import EchoConnection
from .listener import Listener
from .socketserver import *  # noqa: F401,F403
from .socketserver import __all__ as _socketserver_all
from .workers import WorkerPool

__all__ = list(_socketserver_all) + ["EchoConnection", "Listener", "WorkerPool"]
