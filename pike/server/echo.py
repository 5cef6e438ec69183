"""A lean echo connection, for ``python -m pike echo`` and the tests."""

from __future__ import annotations

from pike.transport import Transport

__all__ = ["EchoConnection"]


class EchoConnection(Transport):
    """Writes back every byte it receives, with flow control.

    When the peer reads more slowly than it sends, the write buffer rises
    above its high water mark and reading pauses until it drains: memory
    stays bounded whatever the peer does. On a graceful server shutdown
    (:meth:`handle_shutdown`) it stops reading and closes once everything
    received has been echoed.
    """

    read_size = 65536
    _stopping = False

    def handle_data(self, data: bytes) -> None:
        self.write(data)

    def handle_pause_writing(self) -> None:
        self.pause_reading()

    def handle_resume_writing(self) -> None:
        if not self._stopping:
            self.resume_reading()

    def handle_shutdown(self) -> None:
        self._stopping = True
        self.pause_reading()
        self.close_when_done()
