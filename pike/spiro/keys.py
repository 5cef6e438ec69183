"""Reading a shared key from a file or the environment, the way ssh reads
a private key: a file that others may read or write is refused.

Why refuse rather than warn: whoever can read the key can run code as the
server's user, and a warning scrolls by unseen in a service's log.
"""

import os
import stat

from .protocol import as_key

__all__ = ["ENV_KEY", "KeyFileError", "key_from_env", "read_key_file"]

#: The environment variable that may hold the key.
ENV_KEY = "PIKE_SPIRO_AUTHKEY"

_MAX_KEY_FILE = 4096  # a key file larger than this is not a key file


class KeyFileError(ValueError):
    """A key file or key that cannot be used; the message says why and what to do."""


def read_key_file(path):
    """The key held in the file ``path`` (surrounding whitespace stripped).

    Raises :exc:`KeyFileError` when the file cannot be read, when it is a
    regular file that its group or others may read or write (on POSIX;
    ``chmod 600`` fixes it), and when the key in it is shorter than
    :data:`~pike.spiro.protocol.MIN_KEY_LENGTH` bytes or the file is
    larger than 4 KiB.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if os.name == "posix" and stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
            raise KeyFileError(
                f"the key file {path} may be read or written by others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); refusing it: chmod 600 {path}"
            )
        try:
            data = f.read(_MAX_KEY_FILE + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"the key file {path} is over {_MAX_KEY_FILE} bytes; not a key")
    return _checked(data.strip(), f"the key in {path}")


def key_from_env(environ=None):
    """The key in ``$PIKE_SPIRO_AUTHKEY``, or None when it is not set.

    Raises :exc:`KeyFileError` for a key shorter than the minimum.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_KEY)
    if not text:
        return None
    return _checked(text.encode("utf-8"), f"the key in ${ENV_KEY}")


def _checked(key, where):
    try:
        return as_key(key)
    except ValueError as exc:
        raise KeyFileError(f"{where}: {exc}") from None
