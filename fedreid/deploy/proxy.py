"""The coordinator's front door: nginx forwards only the Fleet API, the part sites use.

Flower 1.41 serves the Fleet API (sites), the Control API (submit, stop, list runs, register
keys) and the Runtime API (the ServerApp) on one port, and the open-source SuperLink has no
account authentication. So the SuperLink listens on loopback only (``--control-port``) and
nginx (a system package) listens on the public address: it passes ``/v1/fleet/`` through and
answers everything else with 403, so submitting or stopping a run needs a shell on the
coordinator (or an SSH tunnel to it — the SSH login is the credential). Refused requests
and plain HTTP sent to the TLS port are logged on the coordinator's stderr, named.

The SuperLink keeps its state in SQLite and answers 500 ("database is locked") when a write
waits for the lock longer than Flower's 5 s busy timeout — under load, several sites sending
their replies at once. A SuperNode does not resend a reply that failed: the round would wait
for it until ``fl.round_timeout``. So nginx buffers each Fleet request and sends it again
(``UPSTREAM_TRIES`` times in all) when the SuperLink answers 500, 502 or 503 or drops the
connection; a failed write was rolled back, so the same request is safe to repeat.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedreid.deploy.certs import TlsFiles

FLEET_PREFIX = "/v1/fleet/"
LOOPBACK = "127.0.0.1"
# The name the proxy checks the SuperLink's certificate against on the loopback hop;
# `fedreid certs` always adds it (certs.LOOPBACK_HOSTS).
UPSTREAM_NAME = "localhost"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
UPSTREAM_TRIES = 6  # tries per Fleet request (nginx tries each listed server at most once per request)
INSTALL_HINT = ("install nginx from the system packages (Debian/Ubuntu: `apt-get install nginx-light`; "
                "RHEL/Fedora: `dnf install nginx`)")


@dataclass(frozen=True)
class ProxyPlan:
    """Where the proxy listens, where the SuperLink is, and how both speak TLS."""

    host: str  # public interface for sites
    port: int  # public port (Fleet API only)
    control_port: int  # the SuperLink on 127.0.0.1: Control, Runtime and Fleet APIs
    tls: TlsFiles | None  # None: plain HTTP on both hops (tests on a trusted network)
    folder: Path  # nginx.conf, its pid file and temporary folders


def nginx_bin() -> str:
    """nginx on PATH, else where Debian puts it (/usr/sbin is often not on a user's PATH)."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/sbin/nginx")
                                           if Path(p).is_file()), None)
    if found is None:
        raise ValueError(f"nginx is not installed: the coordinator puts it in front of the SuperLink "
                         f"so that sites reach only the Fleet API; {INSTALL_HINT}")
    return found


def _user_line() -> str:
    """Started as root, nginx's workers would switch to ``nobody``, who cannot write request
    bodies into the temporary folders below a private folder: they run as the user who
    started the coordinator, like the SuperLink itself."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"


def _listen_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def nginx_config(plan: ProxyPlan) -> str:
    """The whole nginx.conf: Fleet paths to the SuperLink, all else refused and logged."""
    folder = plan.folder.resolve()
    scheme = "https" if plan.tls else "http"
    submit = f"submit and stop runs on the coordinator itself ({LOOPBACK}:{plan.control_port})"
    temps = "\n".join(f"    {name}_temp_path {folder / 'tmp' / name};" for name in TEMP_DIRS)
    # The SuperLink listed once per try: nginx never picks the same entry twice for one request.
    servers = "\n".join(f"        server {LOOPBACK}:{plan.control_port} max_fails=0;" for _ in range(UPSTREAM_TRIES))
    tls_server = tls_upstream = plain_http = ""
    if plan.tls:
        tls_server = (f"        ssl_certificate {plan.tls.server_cert.resolve()};\n"
                      f"        ssl_certificate_key {plan.tls.server_key.resolve()};\n")
        tls_upstream = (f"            proxy_ssl_trusted_certificate {plan.tls.ca_cert.resolve()};\n"
                        "            proxy_ssl_verify on;\n"
                        f"            proxy_ssl_name {UPSTREAM_NAME};\n"
                        "            proxy_ssl_server_name on;\n")
        # 497: nginx's code for plain HTTP on a TLS port (a site started with --insecure).
        plain_http = ("        error_page 497 = @plain_http;\n"
                      "        location @plain_http {\n"
                      "            access_log /dev/stderr fedreid_plain_http;\n"
                      "            return 400 \"this coordinator speaks HTTPS: start the site without "
                      "--insecure, with --root-certificates ca.crt\\n\";\n"
                      "        }\n")
    return f"""# Written by `fedreid server start` at every start; edits are overwritten.
daemon off;
{_user_line()}worker_processes 1;
pid {folder / 'nginx.pid'};
error_log stderr warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    server_tokens off;
    log_format fedreid_refused 'fedreid proxy: refused $request_method $request_uri from $remote_addr: this port serves sites only ({FLEET_PREFIX}); {submit}';
    log_format fedreid_plain_http 'fedreid proxy: plain HTTP from $remote_addr on the TLS port: that site was started with --insecure; start it with --root-certificates ca.crt';
{temps}
    client_max_body_size 0;
    upstream superlink {{
{servers}
    }}
    server {{
        listen {_listen_host(plan.host)}:{plan.port}{' ssl' if plan.tls else ''};
{tls_server}{plain_http}        location {FLEET_PREFIX} {{
            proxy_pass {scheme}://superlink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_next_upstream error timeout http_500 http_502 http_503 non_idempotent;
            proxy_next_upstream_tries {UPSTREAM_TRIES};
            proxy_request_buffering on;
            proxy_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
{tls_upstream}        }}
        location / {{
            access_log /dev/stderr fedreid_refused;
            default_type text/plain;
            return 403 "forbidden: this port serves sites only ({FLEET_PREFIX}); {submit}\\n";
        }}
    }}
}}
"""


def write_config(plan: ProxyPlan) -> Path:
    """Write ``nginx.conf`` (and nginx's temporary folders) into ``plan.folder``."""
    for name in TEMP_DIRS:
        (plan.folder / "tmp" / name).mkdir(parents=True, exist_ok=True)
    conf = plan.folder / "nginx.conf"
    conf.write_text(nginx_config(plan))
    return conf


def nginx_command(conf: Path, *, test: bool = False, binary: str | None = None) -> list[str]:
    """Run (or with ``test``, only check) nginx with ``conf``; its log goes to stderr.
    ``binary`` skips looking nginx up (a dry run on a machine without it)."""
    conf = Path(conf).resolve()
    return [binary or nginx_bin(), "-p", str(conf.parent), "-c", str(conf), "-e", "stderr", *(["-t", "-q"] if test else [])]
