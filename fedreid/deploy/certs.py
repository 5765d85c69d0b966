"""TLS certificates and site keys for a test or small deployment (``cryptography`` only).

- A private CA (``ca.crt``/``ca.key``) signs the coordinator's server certificate
  (``server.pem``/``server.key``); sites only need ``ca.crt`` to verify the coordinator.
  An existing CA is reused, so re-issuing the server certificate for new host names does
  not force every site to fetch a new ``ca.crt``.
- Each site gets an EC P-384 key pair in OpenSSH format — what ``flower-supernode
  --auth-supernode-private-key`` reads and ``flwr supernode register`` accepts. The key is
  the site's identity: the SuperLink maps it to the same node across restarts, so it is
  never overwritten silently.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
# The SuperLink's own ServerApp process reaches the SuperLink over loopback, so the server
# certificate must also be valid for these names whatever the public host names are.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SITE_COMMENT = "fedreid-site-"  # a site's .pub ends with this + the site name


@dataclass(frozen=True)
class TlsFiles:
    """What the SuperLink needs (all three) and what sites need (``ca_cert``)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_folder(cls, folder: str | os.PathLike) -> TlsFiles:
        """The standard file names in ``folder``; a clear error naming what is missing."""
        folder = Path(folder)
        files = cls(folder / CA_CERT, folder / SERVER_CERT, folder / SERVER_KEY)
        missing = [p.name for p in (files.ca_cert, files.server_cert, files.server_key) if not p.is_file()]
        if missing:
            raise ValueError(
                f"--certs {folder} lacks {', '.join(missing)}; create them with "
                f"`fedreid certs --out {folder} --host <coordinator host name or IP>`"
            )
        return files


@dataclass(frozen=True)
class SiteKeys:
    private_key: Path
    public_key: Path


def check_site_name(site: str) -> str:
    if not SITE_NAME.match(site):
        raise ValueError(
            f"site name {site!r} is not valid; use letters, digits, '.', '_' or '-' "
            "(at most 64 characters, starting with a letter or digit)"
        )
    return site


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.match(r"^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$", host):
        raise ValueError(
            f"--host {host!r} is neither an IP address nor a DNS name; pass the name or "
            "address sites use to reach the coordinator, e.g. --host coord.example.org"
        )
    return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    """Create with mode 0600 from the start: a key must never be world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedreid"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _create_ca(folder: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedreid federation CA"))
        .issuer_name(_name("fedreid federation CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(folder / CA_KEY, _pem_key(key))
    (folder / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{folder / CA_KEY} is not an EC key; remove the CA files or pass --new-ca")
    return cert, key


def create_certificates(out_dir: str | os.PathLike, hosts: Sequence[str], *, days: int = 365,
                        new_ca: bool = False) -> TlsFiles:
    """Write (or reuse) the CA and issue a server certificate valid for ``hosts`` + loopback."""
    if days < 1:
        raise ValueError(f"--days {days} must be at least 1")
    names = list(dict.fromkeys([*hosts, *LOOPBACK_HOSTS]))
    sans = [_san(h) for h in names]
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    have_ca = (folder / CA_CERT).is_file() and (folder / CA_KEY).is_file()
    ca_cert, ca_key = _load_ca(folder) if have_ca and not new_ca else _create_ca(folder, days)
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(folder / SERVER_KEY, _pem_key(key))
    (folder / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(folder / CA_CERT, folder / SERVER_CERT, folder / SERVER_KEY)


def certificate_hosts(cert_file: str | os.PathLike) -> list[str]:
    """The host names and addresses a certificate is valid for (its SANs)."""
    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in (*san.get_values_for_type(x509.DNSName),
                             *san.get_values_for_type(x509.IPAddress))]


def site_key_paths(out_dir: str | os.PathLike, site: str) -> SiteKeys:
    folder = Path(out_dir)
    return SiteKeys(folder / f"{check_site_name(site)}.key", folder / f"{site}.pub")


def create_site_keys(out_dir: str | os.PathLike, site: str, *, overwrite: bool = False) -> SiteKeys:
    """An EC P-384 key pair in OpenSSH format: ``<site>.key`` (0600) and ``<site>.pub``."""
    paths = site_key_paths(out_dir, site)
    if paths.private_key.exists() and not overwrite:
        raise ValueError(
            f"{paths.private_key} exists: it is the identity of site {site!r}. Keep it, or pass "
            "--force to replace it (then register the new .pub with the coordinator again)"
        )
    paths.private_key.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(paths.private_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    paths.public_key.write_bytes(public + f" {SITE_COMMENT}{site}\n".encode())
    return paths


def check_public_key(path: str | os.PathLike) -> ec.EllipticCurvePublicKey:
    """Load an OpenSSH EC public key, failing with the file and the fix (before Flower does)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"public key {path} does not exist; create it with `fedreid keys create SITE`")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{path} is not an OpenSSH public key ({exc}); pass the site's .pub file") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path} is not an EC key; Flower's SuperNode authentication needs an "
                         "EC key on a NIST curve (`fedreid keys create` makes P-384)")
    return key


def site_of_public_key(path: str | os.PathLike) -> str:
    """The site a public key belongs to: the name `fedreid keys create` writes into its
    comment (``fedreid-site-NAME``), else the file name without ``.pub``."""
    path = Path(path)
    fields = path.read_text(errors="replace").split()
    comment = fields[2] if len(fields) > 2 else ""
    site = comment[len(SITE_COMMENT):] if comment.startswith(SITE_COMMENT) else path.stem
    try:
        return check_site_name(site)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; rename the file to <site>.pub") from exc


def check_private_key(path: str | os.PathLike) -> None:
    """A site must start with its own readable OpenSSH EC private key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--key {path} does not exist; create it with `fedreid keys create SITE --out "
                         f"{path.parent}` and register its .pub with the coordinator")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"--key {path} is not an unencrypted OpenSSH private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"--key {path} is not an EC key; create one with `fedreid keys create`")
