"""Certificates and site keys: valid chains, the right names, private files, no silent overwrite."""

from __future__ import annotations

import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedreid.deploy.certs import (
    TlsFiles,
    certificate_hosts,
    check_private_key,
    check_public_key,
    create_certificates,
    create_site_keys,
)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_certificate_is_signed_by_the_ca_for_every_host(tmp_path):
    files = create_certificates(tmp_path, ["coord.example.org", "10.0.0.5"], days=30)
    assert files == TlsFiles.in_folder(tmp_path)
    hosts = certificate_hosts(files.server_cert)
    assert set(hosts) == {"coord.example.org", "10.0.0.5", "localhost", "127.0.0.1"}
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _mode(files.server_key) == 0o600 and _mode(tmp_path / "ca.key") == 0o600


def test_ca_is_reused_unless_asked(tmp_path):
    first = create_certificates(tmp_path, ["a.example"]).ca_cert.read_bytes()
    again = create_certificates(tmp_path, ["b.example"])
    assert again.ca_cert.read_bytes() == first  # sites keep their ca.crt
    assert "b.example" in certificate_hosts(again.server_cert)
    assert create_certificates(tmp_path, ["b.example"], new_ca=True).ca_cert.read_bytes() != first


@pytest.mark.parametrize("host", ["bad host", "-x", "a_b!"])
def test_bad_host_names_the_value(tmp_path, host):
    with pytest.raises(ValueError, match="--host"):
        create_certificates(tmp_path, [host])


def test_missing_files_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"ca\.crt.*fedreid certs"):
        TlsFiles.in_folder(tmp_path)


def test_tls_handshake_with_the_generated_files(tmp_path):
    """A client that trusts only ca.crt accepts the server certificate at 127.0.0.1."""
    files = create_certificates(tmp_path, ["127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(tls.recv(4))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
    thread.join(5)
    listener.close()
    other = create_certificates(tmp_path / "other", ["127.0.0.1"])
    stranger = ssl.create_default_context(cafile=str(other.ca_cert))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    thread = threading.Thread(target=lambda: _accept_and_fail(listener, server_ctx), daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            stranger.wrap_socket(raw, server_hostname="127.0.0.1")
    thread.join(5)
    listener.close()


def _accept_and_fail(listener, ctx) -> None:
    conn, _ = listener.accept()
    try:
        ctx.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError):
        conn.close()


def test_site_keys_are_openssh_ec_and_not_overwritten(tmp_path):
    keys = create_site_keys(tmp_path, "market")
    assert _mode(keys.private_key) == 0o600
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    public = check_public_key(keys.public_key)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    check_private_key(keys.private_key)
    with pytest.raises(ValueError, match="identity of site 'market'.*--force"):
        create_site_keys(tmp_path, "market")
    replaced = create_site_keys(tmp_path, "market", overwrite=True)
    assert check_public_key(replaced.public_key).public_numbers() != public.public_numbers()


def test_key_errors_name_the_file_and_fix(tmp_path):
    with pytest.raises(ValueError, match="site name"):
        create_site_keys(tmp_path, "../etc")
    with pytest.raises(ValueError, match="does not exist.*fedreid keys create"):
        check_public_key(tmp_path / "none.pub")
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    with pytest.raises(ValueError, match="junk.pub is not an OpenSSH public key"):
        check_public_key(junk)
    with pytest.raises(ValueError, match="--key .* does not exist"):
        check_private_key(tmp_path / "none.key")
