"""A drop-in ``socketserver``: the face of :mod:`pike.server.socketserver`.

The public API is the standard library's ``socketserver`` of Python 3.12
and 3.13 (3.11's is the same less ``ForkingUnixStreamServer`` and
``ForkingUnixDatagramServer`` in ``__all__``, which are here on 3.11 too):
``BaseServer``, ``TCPServer``, ``UDPServer``, the Unix servers, the
``ThreadingMixIn`` / ``ForkingMixIn`` families and the request handlers.
``pike.compat.install(socketserver=True)`` makes ``import socketserver``
find this module.

The work is done by :mod:`pike.server.socketserver` (every wait for a
request is a wait on a pike poller). Each class here is an empty subclass of
pike's class of the same name, arranged in the same hierarchy, so that

* ``isinstance`` / ``issubclass`` hold among these classes as among the
  standard library's (``socketserver.ThreadingTCPServer`` is a
  ``socketserver.TCPServer`` and a ``socketserver.ThreadingMixIn``), and
  objects made here are instances of pike's classes as well;
* the classes say ``__module__ == "socketserver"``, as the standard
  library's do (CPython's own test-suite checks it against ``__all__``);
* class attributes an application changes here (``allow_reuse_address``,
  ``daemon_threads``...) affect this module's classes, not pike's native
  ones.

The method resolution is pike's: the subclasses add nothing.
"""

import pike.server.socketserver as _impl

__all__ = list(_impl.__all__)
__version__ = getattr(_impl, "__version__", "0.4")


def _make_faces():
    """One empty subclass per public class of pike's module, same hierarchy."""
    faces = {}
    publics = {name: getattr(_impl, name) for name in __all__}
    by_class = {cls: name for name, cls in publics.items() if isinstance(cls, type)}

    def face(cls):
        name = by_class[cls]
        if name in faces:
            return faces[name]
        bases = tuple(face(base) for base in cls.__bases__ if base in by_class)
        namespace = {"__module__": "socketserver", "__doc__": cls.__doc__,
                     "__qualname__": cls.__qualname__}
        faces[name] = type(name, bases + (cls,), namespace)
        return faces[name]

    for cls in by_class:
        face(cls)
    for name, value in publics.items():
        if name not in faces:
            faces[name] = value  # not a class: the same object
    return faces


globals().update(_make_faces())
del _make_faces
