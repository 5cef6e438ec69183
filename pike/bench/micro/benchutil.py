"""Socket helpers shared by the microbenchmarks."""


def drain(sock, buf=bytearray(1 << 20)):
    """Read everything waiting on the non-blocking ``sock``; return the count."""
    total = 0
    while True:
        try:
            n = sock.recv_into(buf)
        except BlockingIOError:
            return total
        if not n:
            return total
        total += n


def fill(sock, chunk=b"\0" * 65536):
    """Send on the non-blocking ``sock`` until the kernel takes no more."""
    while True:
        try:
            sock.send(chunk)
        except BlockingIOError:
            break
    # The kernel may still take a few small sends; offer them too.
    while True:
        try:
            sock.send(chunk[:1])
        except BlockingIOError:
            return
