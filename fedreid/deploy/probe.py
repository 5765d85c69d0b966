"""Does the coordinator speak the protocol a site was told to use? Asked before it joins.

A SuperNode told ``--insecure`` that reaches a TLS coordinator (or the reverse) fails in
ways Flower does not name: plain HTTP against TLS is retried forever ("Connection attempt
failed, retrying") and TLS against plain HTTP ends in an SSL error. One short connection
tells the cases apart. An unreachable coordinator is not a mismatch: the site retries.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

TIMEOUT_S = 5.0


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--superlink {address!r} needs a port, e.g. {address}:9092")
    return host.strip("[]"), int(port)


def protocol_problem(address: str, root_certificates: Path | None) -> str | None:
    """Why a site cannot talk to ``address`` the way it was told to (``root_certificates``
    None: plain HTTP), or None when it can or the coordinator is not reachable now."""
    host, port = split_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=TIMEOUT_S)
    except OSError:
        return None  # down or unreachable now: the SuperNode retries until it is up
    with sock:
        return _plain_problem(sock) if root_certificates is None else _tls_problem(sock, host, root_certificates)


def _plain_problem(sock: socket.socket) -> str | None:
    try:
        sock.sendall(b"GET /v1/fleet/ HTTP/1.0\r\nHost: fedreid-probe\r\n\r\n")
        answer = sock.recv(4096)
    except OSError:
        answer = b""
    if answer.startswith(b"HTTP/") and b"HTTPS" not in answer:
        return None  # an HTTP answer; a TLS port answers with nothing, an alert, or nginx's 400
    return ("the coordinator speaks HTTPS (TLS) but this site was started with --insecure (plain "
            "HTTP), which it would retry forever; drop --insecure and pass --root-certificates "
            "with the federation's ca.crt")


def _tls_problem(sock: socket.socket, host: str, root_certificates: Path) -> str | None:
    context = ssl.create_default_context(cafile=str(root_certificates))
    try:
        with context.wrap_socket(sock, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        return (f"the coordinator's certificate does not verify against {root_certificates} "
                f"({exc.verify_message}); get the federation's current ca.crt from the coordinator's "
                f"operator, and connect by a name or address the certificate lists")
    except (ssl.SSLError, OSError) as exc:
        if "WRONG_VERSION_NUMBER" in str(exc) or "record layer" in str(exc) or "wrong version" in str(exc):
            return ("the coordinator speaks plain HTTP (it was started with --insecure) but this site "
                    "was told to use TLS; start the site with --insecure too (tests only), or have the "
                    f"coordinator started with TLS ({exc})")
        return None
