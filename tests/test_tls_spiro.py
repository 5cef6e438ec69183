"""pike.spiro over TLS: the server, connect(ssl_context=...), and the CLI."""

import socket
import ssl
import subprocess

import pytest

from pike import spiro

from spiro_support import KEY, key_file, spiro_cli, start_server, stop
from tls_support import Certs


@pytest.fixture(scope="module")
def certs():
    return Certs()


@pytest.fixture(scope="module")
def pem_files(certs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pem")
    cert, ca = folder / "cert.pem", folder / "ca.pem"
    certs.server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    certs.ca.cert_pem.write_to_path(str(ca))
    return str(cert), str(ca)


def test_session_over_tls(certs):
    with spiro.SpiroServer(authkey=KEY, ssl_context=certs.server_context()) as server:
        server.start()
        with spiro.connect(server.address, KEY, ssl_context=certs.client_context(),
                           server_hostname="localhost") as session:
            assert session.eval("6 * 7") == 42
            session.do("box = [1, 2, 3]")
            assert session.eval("sum(box)") == 6
            assert isinstance(session._sock, ssl.SSLSocket)  # (the channel itself)


def test_wrong_key_inside_tls_is_still_refused(certs):
    with spiro.SpiroServer(authkey=KEY, ssl_context=certs.server_context()) as server:
        server.start()
        with pytest.raises(spiro.AuthenticationError):
            spiro.connect(server.address, b"another key, 16+ bytes",
                          ssl_context=certs.client_context(), server_hostname="localhost")


def test_untrusted_server_is_refused(certs):
    with spiro.SpiroServer(authkey=KEY, ssl_context=certs.server_context()) as server:
        server.start()
        with pytest.raises(ssl.SSLCertVerificationError):
            spiro.connect(server.address, KEY, ssl_context=ssl.create_default_context(),
                          server_hostname="localhost")
        # The server goes on serving.
        with spiro.connect(server.address, KEY, ssl_context=certs.client_context(),
                           server_hostname="localhost") as session:
            assert session.eval("1 + 1") == 2


def test_plaintext_client_of_a_tls_server_gets_nothing_readable(certs):
    with spiro.SpiroServer(authkey=KEY, ssl_context=certs.server_context()) as server:
        server.start()
        sock = socket.create_connection(server.address, timeout=5)
        try:
            sock.sendall(b"\x00\x00\x00\x05hello")
            data = b""
            try:
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                pass
            assert spiro.protocol.MAGIC not in data  # no greeting in the clear
        finally:
            sock.close()


def test_server_rejects_a_non_context():
    with pytest.raises(TypeError):
        spiro.SpiroServer(authkey=KEY, ssl_context="cert.pem")


def test_cli_serve_and_shell_over_tls(tmp_path, pem_files):
    cert, ca = pem_files
    server, (host, port) = start_server(tmp_path, "--tls-cert", cert)
    try:
        assert server.stdout.readline().startswith("spiro: TLS only")
        shell = spiro_cli("shell", f"{host}:{port}", "--authkey-file", str(key_file(tmp_path)),
                          "--tls-ca", ca, "--tls-hostname", "localhost",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = shell.communicate("2 ** 10\nprint('hi')\n", timeout=30)
        assert shell.returncode == 0, err
        assert out.split() == ["1024", "hi"]
        # Without trusting the CA: a clear one-line failure, status 1.
        plain = spiro_cli("shell", f"{host}:{port}", "--authkey-file", str(key_file(tmp_path)),
                          "--tls", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
        out, err = plain.communicate("1\n", timeout=30)
        assert plain.returncode == 1
        assert "certificate verify failed" in err
    finally:
        stop(server)


def test_cli_tls_key_without_cert(tmp_path):
    proc = spiro_cli("serve", "--authkey-file", str(key_file(tmp_path)), "--tls-key", "k.pem",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "--tls-key needs --tls-cert" in err
