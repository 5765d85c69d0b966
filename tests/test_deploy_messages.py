"""Messages an operator can act on: the proxy's rules, protocol mismatches named before Flower
retries forever, an unregistered key explained, every data problem in one pass, a failed
run's reason without its traceback, one hostile reply on demand, rounds recorded once."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from cli.deploy import _SupernodeWatch, run_supernode
from cli.main import app as deploy_app
from clients.faults import parse_faults
from fedreid.data.synth import generate_synthetic8
from fedreid.deploy import processes, proxy, run_status
from fedreid.deploy.certs import create_certificates, create_site_keys, site_of_public_key
from fedreid.deploy.probe import protocol_problem
from fedreid.deploy.site_check import find_problems
from server.checkpoint import drop_uncommitted_records

runner = CliRunner()
NGINX = pytest.mark.skipif(shutil.which("nginx") is None and not proxy.Path("/usr/sbin/nginx").exists(),
                           reason="nginx is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return create_certificates(tmp_path_factory.mktemp("pki"), ["127.0.0.1"])


def test_the_proxy_passes_the_fleet_api_only(pki, tmp_path):
    conf = proxy.nginx_config(proxy.ProxyPlan("10.0.0.5", 9092, 9093, pki, tmp_path))
    assert "listen 10.0.0.5:9092 ssl;" in conf
    assert conf.count("location ") == 3  # /v1/fleet/, everything else, plain HTTP on the TLS port
    assert "location /v1/fleet/ {\n            proxy_pass https://superlink;" in conf
    assert conf.count("server 127.0.0.1:9093 max_fails=0;") == proxy.UPSTREAM_TRIES
    assert "return 403" in conf and "error_page 497" in conf and "proxy_ssl_verify on;" in conf
    plain = proxy.nginx_config(proxy.ProxyPlan("0.0.0.0", 9092, 9093, None, tmp_path))
    assert "listen 0.0.0.0:9092;" in plain and "proxy_pass http://superlink;" in plain and "497" not in plain


@NGINX
def test_nginx_accepts_the_config(pki, tmp_path):
    conf = proxy.write_config(proxy.ProxyPlan("127.0.0.1", 9092, 9093, pki, tmp_path))
    check = processes.subprocess.run(proxy.nginx_command(conf, test=True), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


class _LockedLink(http.server.BaseHTTPRequestHandler):
    """A SuperLink whose database is locked for the first two writes (answers 500)."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        code = 500 if len(self.bodies) <= 2 else 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok" if code == 200 else b"no")

    def log_message(self, *args) -> None:
        pass


@NGINX
def test_the_proxy_resends_a_fleet_request_the_superlink_failed(tmp_path):
    """SQLite "database is locked" (500) on a site's reply: nginx sends it again, the site
    never sees the failure; control paths stay refused."""
    link = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LockedLink)
    _LockedLink.bodies = []
    threading.Thread(target=link.serve_forever, daemon=True).start()
    port = link.server_address[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        public = s.getsockname()[1]
    conf = proxy.write_config(proxy.ProxyPlan("127.0.0.1", public, port, None, tmp_path))
    nginx = processes.start_process(proxy.nginx_command(conf), log_file=tmp_path / "nginx.log", env=dict(os.environ))
    try:
        processes.wait_for(lambda: processes.port_open("127.0.0.1", public), 10, "nginx", proc=nginx)
        body = b"\x00reply" * 5000  # larger than nginx's in-memory body buffer
        request = urllib.request.Request(f"http://127.0.0.1:{public}/v1/fleet/push-object", data=body)
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200 and answer.read() == b"ok"
        assert _LockedLink.bodies == [body] * 3
        control = urllib.request.Request(f"http://127.0.0.1:{public}/v1/control/start-run", data=b"x")
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(control, timeout=10)
        assert len(_LockedLink.bodies) == 3
    finally:
        processes.stop_tree(nginx, timeout=5)
        link.shutdown()
    assert "fedreid proxy: refused POST /v1/control/start-run" in (tmp_path / "nginx.log").read_text()


def _serve(sock: socket.socket, answer, tls: ssl.SSLContext | None) -> threading.Thread:
    def run() -> None:
        for _ in range(3):
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            try:
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_side=True)
                conn.recv(1024)
                conn.sendall(answer)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def listener():
    socks = []

    def make() -> tuple[socket.socket, str]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        socks.append(sock)
        return sock, f"127.0.0.1:{sock.getsockname()[1]}"

    yield make
    for sock in socks:
        sock.close()


def test_a_protocol_mismatch_is_named_both_ways(pki, listener):
    tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    tls_sock, tls_addr = listener()
    _serve(tls_sock, b"HTTP/1.1 404 Not Found\r\n\r\n", tls_ctx)
    assert "speaks HTTPS" in protocol_problem(tls_addr, None)  # --insecure against TLS
    assert protocol_problem(tls_addr, pki.ca_cert) is None
    plain_sock, plain_addr = listener()
    _serve(plain_sock, b"HTTP/1.1 404 Not Found\r\n\r\n", None)
    assert protocol_problem(plain_addr, None) is None
    assert "speaks plain HTTP" in protocol_problem(plain_addr, pki.ca_cert)
    other = create_certificates(pki.ca_cert.parent.parent / "other", ["127.0.0.1"])
    assert "does not verify" in protocol_problem(tls_addr, other.ca_cert)
    closed, closed_addr = listener()
    closed.close()
    assert protocol_problem(closed_addr, None) is None  # down: not a mismatch, the site retries


REFUSED = "echo 'ERROR : Exit Code: 305'; echo '[code: 2004] Failed to activate SuperNode.'; exit 1"


def test_a_key_refused_for_good_is_retried_then_explained_with_the_command(capsys, tmp_path):
    waits: list[float] = []
    code = run_supernode(["sh", "-c", REFUSED], {"PATH": "/usr/bin:/bin"},
                         lambda: _SupernodeWatch("market", "127.0.0.1:9", None, tmp_path / "keys" / "market.key"),
                         activation_wait=0.0, sleep=waits.append)
    out = capsys.readouterr().out
    assert code == 1 and waits == [] and out.count("fedreid keys register market.pub") == 1


def test_a_key_still_held_by_a_stopped_node_is_retried_until_it_is_free(capsys, tmp_path):
    """The coordinator refuses a key for about a minute after its node stopped; the site
    starts its SuperNode again (here: refused twice, then accepted) instead of exiting."""
    tries = tmp_path / "tries"
    script = (f"echo x >> {tries}; if [ $(wc -l < {tries}) -le 2 ]; then {REFUSED}; fi; "
              "echo 'INFO : SuperNode ID: 42'; exit 0")
    waits: list[float] = []
    code = run_supernode(["sh", "-c", script], {"PATH": "/usr/bin:/bin"},
                         lambda: _SupernodeWatch("market", "127.0.0.1:9", None, None),
                         activation_wait=60.0, retry_every=5.0, sleep=waits.append)
    out = capsys.readouterr().out
    assert code == 0 and waits == [5.0, 5.0] and out.count("trying again in 5 s") == 2
    assert "SuperNode ID: 42" in out


def test_a_retrying_plain_site_against_tls_is_stopped_with_the_reason(pki, listener, capsys):
    tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    sock, addr = listener()
    _serve(sock, b"", tls_ctx)
    script = "echo 'WARNING : Connection attempt failed, retrying in 0.9 seconds'; sleep 30"
    watch = _SupernodeWatch("market", addr, None, None)
    code = processes.run_watched(["sh", "-c", script], env={"PATH": "/usr/bin:/bin"}, on_line=watch)
    assert code != 0 and watch.mismatch and "speaks HTTPS" in capsys.readouterr().out


def test_site_check_reports_every_problem_in_one_pass(tmp_path):
    generate_synthetic8(tmp_path, scale=0.05, seed=0, size=(32, 16), sites=["market"], min_test_ids=6, workers=1)
    site = tmp_path / "market"
    images = sorted((site / "pytorch" / "train_all").rglob("*.jpg"))
    for path in images[:3]:
        path.write_bytes(b"not an image")
    shutil.copy(images[5], images[5].with_name(images[5].stem[:4] + "_c1s9_000001_00.jpg"))
    bad_name = images[10].with_name("garbage.jpg")
    shutil.copy(images[10], bad_name)
    (site / "pytorch" / "train_all" / "notanid").mkdir()
    before = sorted(p.name for p in site.rglob("*"))
    problems = find_problems(site, "fedreid")
    assert sorted(p.name for p in site.rglob("*")) == before  # nothing in the data was touched
    assert sum("corrupt image" in p or "zero-byte" in p for p in problems) == 3
    assert any("garbage.jpg" in p for p in problems) and any("notanid" in p for p in problems)
    assert any("same content" in p for p in problems)
    assert all(str(site) in p for p in problems)  # real paths, not the shadow's
    result = runner.invoke(deploy_app, ["site", "check", str(site)])
    assert result.exit_code == 1 and f"{len(problems)} problem(s)" in result.output
    assert result.output.count("error:") == len(problems) + 1


def test_a_failed_runs_traceback_is_held_back():
    seen: list[str] = []
    shown = run_status.TracebackFilter(seen.append)
    for line in ["INFO round 1", "ERROR run failed: no site", "ERROR ServerApp raised an exception",
                 "Traceback (most recent call last):", '  File "x.py"', "RuntimeError: no site"]:
        shown(line)
    assert seen == ["INFO round 1", "ERROR run failed: no site"] and shown.hidden == 4


def test_one_hostile_reply_on_demand():
    assert parse_faults("nonfinite@5") == {5: "nonfinite"}
    assert parse_faults("norm,shape") == ["norm", "shape"]
    for bad in ("norm@0", "norm@x", "norm@2,shape", "bogus@3", ""):
        with pytest.raises(ValueError, match="KIND@ROUND"):
            parse_faults(bad)


def test_a_public_key_names_its_site(tmp_path):
    keys = create_site_keys(tmp_path, "market")
    renamed = keys.public_key.rename(tmp_path / "copy-for-coordinator.pub")
    assert site_of_public_key(renamed) == "market"  # the comment, not the file name
    bare = tmp_path / "cuhk01.pub"
    bare.write_text(" ".join(renamed.read_text().split()[:2]) + "\n")
    assert site_of_public_key(bare) == "cuhk01"


def test_resume_drops_records_of_rounds_never_checkpointed(tmp_path):
    records = [{"kind": "evaluate", "round": 0}, {"kind": "train", "round": 1}, {"kind": "admission", "round": 1},
               {"kind": "train", "round": 2}, {"kind": "evaluate", "round": 2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert drop_uncommitted_records(tmp_path, 1) == 2
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["round"]) for r in kept] == [("evaluate", 0), ("train", 1), ("admission", 1)]
    assert drop_uncommitted_records(tmp_path, 0) == 2  # nothing committed: the run starts over


def test_processes_a_killed_site_join_left_behind_are_found_and_only_those(tmp_path):
    """A SIGKILLed `site join` takes its SuperNode along, but Flower's SuperExec / ClientApp
    under it live on, retrying; the next `site join` of that site stops them."""
    state = tmp_path / "site-state" / "market"
    gone = subprocess.Popen(["true"])
    gone.wait()
    tags = {"stray": f"{state}|{gone.pid}:1", "live": processes.owner_tag(state),
            "other site": f"{tmp_path / 'cuhk01'}|{gone.pid}:1"}
    procs = {name: subprocess.Popen(["sleep", "60"], env={"PATH": "/usr/bin:/bin", processes.OWNER_VAR: tag})
             for name, tag in tags.items()}
    try:
        processes.wait_for(lambda: all(processes.OWNER_VAR.encode() in processes.environ(p.pid)
                                       for p in procs.values()), 10, "the processes started")
        assert [r.pid for r in processes.strays(state)] == [procs["stray"].pid]
        assert processes.kill_strays(state) == [procs["stray"].pid]
        assert procs["stray"].wait(timeout=10) == -9
        assert procs["live"].poll() is None and procs["other site"].poll() is None
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
