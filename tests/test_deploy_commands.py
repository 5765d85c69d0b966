"""Command lines for Flower's tools, the run config and connection files, CLI errors, process stops."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app as deploy_app
from fedreid.config import from_flat, load_config
from fedreid.config.loader import run_config_toml
from fedreid.deploy import processes, run_status
from fedreid.deploy.certs import TlsFiles, create_certificates, create_site_keys

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    files = create_certificates(root / "certs", ["127.0.0.1"])
    keys = create_site_keys(root / "keys", "market")
    return files, keys


def test_superlink_command_tls_auth_and_database(pki, tmp_path):
    files, _ = pki
    cmd = processes.superlink_command(host="0.0.0.0", port=9092, database=tmp_path / "s.db", tls=files,
                                      supernode_auth=True)
    assert cmd[:3] == [sys.executable, "-m", "server.superlink"]
    assert cmd[cmd.index("--ssl-certfile") + 1] == str(files.server_cert.resolve())
    assert cmd[cmd.index("--database") + 1] == str((tmp_path / "s.db").resolve())
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    assert "--disable-runtime-dependency-installation" in cmd
    insecure = processes.superlink_command(host="127.0.0.1", port=1, database=tmp_path / "s.db", tls=None,
                                           supernode_auth=False)
    assert "--insecure" in insecure and "--ssl-certfile" not in insecure


def test_the_superlink_waits_for_its_database_lock():
    """Flower gives a SQLite write 5 s for the lock; under load that lost replies (500)."""
    from flwr.supercore.constant import SQLITE_PRAGMAS

    from server.superlink import BUSY_TIMEOUT_MS, patient

    assert dict(SQLITE_PRAGMAS)["busy_timeout"] == "5000"  # what Flower ships (1.41)
    raised = dict(patient(SQLITE_PRAGMAS))
    assert raised["busy_timeout"] == str(BUSY_TIMEOUT_MS) and BUSY_TIMEOUT_MS >= 60_000
    assert {k: v for k, v in raised.items() if k != "busy_timeout"} == {
        k: v for k, v in SQLITE_PRAGMAS if k != "busy_timeout"}
    help_text = subprocess.run([sys.executable, "-m", "server.superlink", "--help"], capture_output=True,
                               text=True, timeout=120, cwd=ROOT)
    assert help_text.returncode == 0 and "--enable-supernode-auth" in help_text.stdout


@pytest.mark.parametrize("kwargs, match", [
    (dict(tls=None, supernode_auth=True), "needs TLS"),
    (dict(port=70000), "--port 70000"),
    (dict(database=Path(":memory:")), "--database must be a file"),
])
def test_superlink_command_errors(pki, tmp_path, kwargs, match):
    args = dict(host="0.0.0.0", port=9092, database=tmp_path / "s.db", tls=pki[0], supernode_auth=False)
    with pytest.raises(ValueError, match=match):
        processes.superlink_command(**{**args, **kwargs})


def test_node_config_round_trips_through_flowers_parser(pki):
    from flwr.common.config import parse_config_args

    config = {"site": "market", "data-root": "/data/my sites/market", "dataset": "fedreid",
              "state-dir": "/var/lib/fedreid", "device": "cpu", "n": 3, "flag": True}
    assert parse_config_args([processes.node_config_arg(config)]) == config
    with pytest.raises(ValueError, match="quote"):
        processes.node_config_arg({"site": 'a"b'})


def test_supernode_command(pki):
    files, keys = pki
    cmd = processes.supernode_command(superlink="coord:9092", root_certificates=files.ca_cert,
                                      private_key=keys.private_key, node_config={"site": "market"},
                                      runtime_port=9095, max_wait_time=60)
    assert Path(cmd[0]).name == "flower-supernode"
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(keys.private_key.resolve())
    assert cmd[cmd.index("--max-wait-time") + 1] == "60" and "--max-retries" not in cmd
    assert "--insecure" not in cmd
    with pytest.raises(ValueError, match="needs a port"):
        processes.supernode_command(superlink="coord", root_certificates=None, private_key=None,
                                    node_config={}, runtime_port=9094)


def test_run_config_file_is_the_whole_config():
    cfg = load_config(["data.sites=[market,cuhk01]", "fl.rounds=2", "train.lr=1e-5", "run_dir=/r"])
    flat = tomllib.loads(run_config_toml(cfg))
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert set(flat) <= set(pyproject["tool"]["flwr"]["app"]["config"])  # Flower rejects other keys
    assert from_flat(flat) == cfg
    assert flat["data.sites"] == "market,cuhk01"
    assert tomllib.loads(run_config_toml(cfg, extra={"fl.resume_dir": "/runs/flwr-1"}))["fl.resume_dir"] == "/runs/flwr-1"


def test_connection_file_is_read_by_flower(pki):
    from flwr.cli.flower_config import parse_superlink_connection

    conn = run_status.Connection("127.0.0.1:9092", pki[0].ca_cert)
    parsed = tomllib.loads(conn.config_toml())
    assert parsed["superlink"]["default"] == run_status.CONNECTION
    link = parse_superlink_connection(parsed["superlink"][run_status.CONNECTION], run_status.CONNECTION)
    assert link.address == "127.0.0.1:9092" and link.root_certificates == str(pki[0].ca_cert.resolve())
    insecure = tomllib.loads(run_status.Connection("h:1", None).config_toml())
    assert insecure["superlink"][run_status.CONNECTION]["insecure"] is True


def test_flwr_errors_are_reported_with_flowers_message(tmp_path):
    conn = run_status.Connection("127.0.0.1:9", None)  # nothing listens on the discard port
    with run_status.flwr_cli_env(conn) as env, pytest.raises(RuntimeError, match="flwr ls"):
        run_status.run_info(1, env)


def test_round_lines_name_failures():
    line = run_status.round_line({"kind": "train", "round": 1, "sites": {"a": {}, "b": {}},
                                  "failures": [{"site": "c", "reason": "error 5: heartbeat"}],
                                  "mean_prune_ratio": 0.3, "bytes_up": 2e6})
    assert "round 1 trained: 2 site(s)" in line and "failed: c — error 5: heartbeat" in line
    assert "mAP 0.500" in run_status.round_line({"kind": "evaluate", "round": 2, "sites": {"a": {}},
                                                 "mean_mAP": 0.5, "mean_rank1": 0.7})


# ---- the typer commands --------------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["server"], ["server", "start"], ["server", "run"], ["server", "log"],
                                  ["server", "stop"], ["site"], ["site", "check"], ["site", "join"], ["keys"],
                                  ["keys", "create"], ["keys", "register"], ["keys", "list"],
                                  ["keys", "unregister"], ["certs"]])
def test_help_everywhere(args):
    result = runner.invoke(deploy_app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_certs_and_keys_commands(tmp_path):
    out = runner.invoke(deploy_app, ["certs", "--host", "coord.example.org", "--out", str(tmp_path / "c")])
    assert out.exit_code == 0, out.output
    assert "coord.example.org" in out.output and "every site needs" in out.output
    keys = runner.invoke(deploy_app, ["keys", "create", "market", "cuhk01", "--out", str(tmp_path / "k")])
    assert keys.exit_code == 0, keys.output
    assert (tmp_path / "k" / "cuhk01.pub").exists()
    again = runner.invoke(deploy_app, ["keys", "create", "market", "--out", str(tmp_path / "k")])
    assert again.exit_code == 2 and "--force" in again.output


def test_server_start_dry_run_and_errors(pki, tmp_path):
    certs_dir = str(pki[0].ca_cert.parent)
    ok = runner.invoke(deploy_app, ["server", "start", "--certs", certs_dir, "--database",
                                    str(tmp_path / "db" / "s.db"), "--enable-supernode-auth", "--dry-run"])
    assert ok.exit_code == 0, ok.output
    assert "--enable-supernode-auth" in ok.output and "--ssl-keyfile" in ok.output
    # The SuperLink (and with it the Control API) listens on loopback only; the proxy is public.
    assert "-m server.superlink --host 127.0.0.1 --port 9093" in ok.output
    assert "nginx -p" in ok.output and "sites connect to https://0.0.0.0:9092" in ok.output
    conf = (tmp_path / "db" / "proxy" / "nginx.conf").read_text()
    assert "listen 0.0.0.0:9092 ssl;" in conf and "proxy_pass https://superlink;" in conf
    assert "server 127.0.0.1:9093 max_fails=0;" in conf
    assert (tmp_path / "db").is_dir()
    same = runner.invoke(deploy_app, ["server", "start", "--certs", certs_dir, "--port", "9093",
                                      "--database", str(tmp_path / "s.db"), "--dry-run"])
    assert same.exit_code == 2 and "must differ" in same.output
    missing = runner.invoke(deploy_app, ["server", "start", "--certs", str(tmp_path / "none"), "--dry-run"])
    assert missing.exit_code == 2 and "fedreid certs --out" in missing.output
    both = runner.invoke(deploy_app, ["server", "start", "--insecure", "--enable-supernode-auth",
                                      "--database", str(tmp_path / "s.db"), "--dry-run"])
    assert both.exit_code == 2 and "needs TLS" in both.output
    insecure = runner.invoke(deploy_app, ["server", "start", "--insecure", "--database",
                                          str(tmp_path / "s.db"), "--dry-run"])
    assert insecure.exit_code == 0 and "TLS is off" in insecure.output


def test_site_join_dry_run_and_errors(pki, tmp_path):
    files, keys = pki
    data = tmp_path / "market"
    data.mkdir()
    base = ["site", "join", "--site", "market", "--data", str(data), "--superlink", "127.0.0.1:9092",
            "--root-certificates", str(files.ca_cert), "--key", str(keys.private_key), "--no-check",
            "--state-dir", str(tmp_path / "state"), "--device", "cpu", "--dry-run"]
    ok = runner.invoke(deploy_app, base)
    assert ok.exit_code == 0, ok.output
    assert 'site="market"' in ok.output and "retries with exponential backoff (forever)" in ok.output
    assert "<run>" in ok.output  # one state folder per run
    assert (tmp_path / "state").is_dir()
    cases = [
        (["--insecure"], "--insecure cannot be used with --key"),
        (["--threads", "0"], "--threads 0"),
        (["--method", "nope"], "--method 'nope'"),
        (["--site", "a b"], "site name 'a b'"),
        (["--key", str(tmp_path / "none.key")], "fedreid keys create"),
        (["--root-certificates", str(tmp_path / "none.crt")], "ca.crt"),
        (["--superlink", "coord"], "needs a port"),
    ]
    for extra, match in cases:
        result = runner.invoke(deploy_app, [*base, *extra])
        assert result.exit_code == 2 and match in result.output, (extra, result.output)
    bad_data = runner.invoke(deploy_app, [*base[:-1], "--check"])  # empty folder fails the check
    assert bad_data.exit_code == 1 and "--no-check" in bad_data.output


def test_site_join_names_a_busy_runtime_port_instead_of_flowers_traceback(pki, tmp_path):
    files, keys = pki
    data = tmp_path / "market"
    data.mkdir()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = runner.invoke(deploy_app, [
            "site", "join", "--site", "market", "--data", str(data), "--superlink", "127.0.0.1:9",
            "--root-certificates", str(files.ca_cert), "--key", str(keys.private_key), "--no-check",
            "--state-dir", str(tmp_path / "state"), "--runtime-port", str(port)])
    assert result.exit_code == 2 and f"--runtime-port {port} is in use" in result.output, result.output


def test_site_join_refuses_while_the_audit_blocks(pki, tmp_path):
    """Data audit policy ``block`` with an unsettled finding: `site join` lists it with the fix
    and does not start; once acknowledged it may join."""
    from PIL import Image

    from fedreid.audit.entities import Entity
    from fedreid.audit.gate import ack_line, ack_path, write_block
    from fedreid.audit.scan import Findings, file_digest

    files, keys = pki
    data = tmp_path / "market"
    image = "pytorch/train_all/0001/0001_c1s1_000001_00.jpg"
    (data / image).parent.mkdir(parents=True)
    Image.new("RGB", (16, 32), (200, 40, 40)).save(data / image)
    finding = Findings(image, file_digest(data / image), [], [Entity("PERSON", "Anna Smith", 0.7, "image")])
    write_block(data, [finding], [image], block_level="medium", report=tmp_path / "audit.md")
    base = ["site", "join", "--site", "market", "--data", str(data), "--superlink", "127.0.0.1:9092",
            "--root-certificates", str(files.ca_cert), "--key", str(keys.private_key), "--no-check",
            "--state-dir", str(tmp_path / "state"), "--device", "cpu", "--dry-run"]
    blocked = runner.invoke(deploy_app, base)
    assert blocked.exit_code == 1, blocked.output
    assert image in blocked.output and "1 unresolved finding" in blocked.output
    assert "acknowledged.txt" in blocked.output and "flower-supernode" not in blocked.output
    ack_path(data).write_text(ack_line(finding, "a red shirt, no text") + "\n")
    allowed = runner.invoke(deploy_app, base)
    assert allowed.exit_code == 0 and "flower-supernode" in allowed.output, allowed.output


def test_server_start_dry_run_without_nginx_still_prints_the_commands(pki, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr("fedreid.deploy.proxy.Path.is_file", lambda self: False if "nginx" in str(self)
                        else os.path.isfile(self))
    result = runner.invoke(deploy_app, ["server", "start", "--certs", str(pki[0].ca_cert.parent), "--database",
                                        str(tmp_path / "db" / "s.db"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "nginx is not installed" in result.output and "apt-get install nginx-light" in result.output
    assert "$ nginx -p" in result.output


def test_server_run_rejects_bad_input_before_submitting(pki, tmp_path):
    ca = str(pki[0].ca_cert)
    bad_key = runner.invoke(deploy_app, ["server", "run", "prune.targt=1", "--root-certificates", ca])
    assert bad_key.exit_code == 2 and "prune.targt" in bad_key.output
    no_cert = runner.invoke(deploy_app, ["server", "run", "--root-certificates", str(tmp_path / "x.crt")])
    assert no_cert.exit_code == 2 and "--insecure" in no_cert.output
    resume = runner.invoke(deploy_app, ["server", "run", "--root-certificates", ca, "--resume", str(tmp_path)])
    assert resume.exit_code == 2 and "config.yaml" in resume.output
    down = runner.invoke(deploy_app, ["server", "run", "--insecure", "--superlink", "127.0.0.1:9",
                                      "--run-dir", str(tmp_path / "runs")])
    assert down.exit_code == 1 and "cannot reach the coordinator's control API at 127.0.0.1:9" in down.output
    assert "loopback-only" in down.output


# ---- stopping process trees ----------------------------------------------------------------
def test_stop_tree_stops_children_and_orphans(tmp_path):
    parent = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
    processes.wait_for(lambda: len(processes.descendants(parent.pid)) == 2, 10, "children started")
    orphans = processes.kill_hard(parent)  # crash: children survive, re-parented
    assert len(orphans) == 2 and all(processes.alive(p) for p in orphans)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    started = time.monotonic()
    stopped = processes.stop_tree(other, extra=orphans, timeout=5)
    assert set(orphans) <= set(stopped) and other.pid in {r.pid for r in stopped}
    assert not any(processes.alive(p) for p in stopped)
    assert time.monotonic() - started < 5


def test_a_reused_pid_is_not_signalled():
    me = processes.process_ref(os.getpid())
    stale = processes.ProcessRef(me.pid, me.started - 1)  # same pid, another process
    assert processes.alive(me) and not processes.alive(stale)
    assert processes.stop_tree(stale, timeout=0.1) == []


def test_wait_for_fails_early_when_the_process_dies():
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    with pytest.raises(RuntimeError, match="exited with code 3"):
        processes.wait_for(lambda: False, 10, "never", proc=proc)
    with pytest.raises(TimeoutError, match="not reached within"):
        processes.wait_for(lambda: False, 0.3, "never")


def test_tls_files_explicit_flags(pki, tmp_path):
    files = pki[0]
    result = runner.invoke(deploy_app, ["server", "start", "--ssl-certfile", str(files.server_cert),
                                        "--database", str(tmp_path / "s.db"), "--dry-run"])
    assert result.exit_code == 2 and "all of --ssl-certfile" in result.output
    assert isinstance(TlsFiles.in_folder(files.ca_cert.parent), TlsFiles)


def test_a_flower_app_process_exits_when_its_launcher_dies(tmp_path):
    """ServerApp / ClientApp processes retry a dead SuperLink forever; fedreid's watchdog ends
    them once their launcher is gone (what a crash of the coordinator or a site leaves)."""
    pidfile = tmp_path / "app.pid"
    app = (f"import os, time; from fedreid.deploy.processes import exit_when_orphaned; "
           f"exit_when_orphaned(grace_s=0.5, say=print, poll_s=0.1); "
           f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    launcher = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; "
                                 f"subprocess.Popen([sys.executable, '-c', {app!r}]); time.sleep(60)"],
                                start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    processes.wait_for(lambda: pidfile.exists() and pidfile.read_text(), 30, "app started")
    app_ref = processes.process_ref(int(pidfile.read_text()))
    processes.kill_hard(launcher)
    processes.wait_for(lambda: not processes.alive(app_ref), 15, "the orphaned app exits")


class _NoLog:
    def __init__(self, *args):
        pass

    def close(self, grace: float) -> None:
        pass


def test_following_a_run_survives_a_busy_superlink_but_not_a_dead_one(monkeypatch):
    """A status query the SuperLink misses (busy on its database) is asked again; only a
    silence of CONTACT_GRACE_S means the coordinator is gone."""
    answers = iter([RuntimeError("unavailable"), RuntimeError("unavailable"), {"status": "running"},
                    {"status": "finished:completed"}])

    def run_info(run_id, env):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(run_status, "_LogFollower", _NoLog)
    monkeypatch.setattr(run_status, "run_info", run_info)
    info = run_status.follow_run(1, {}, echo=print, poll_s=0.01)
    assert info["status"] == "finished:completed"

    def gone(run_id, env):
        raise RuntimeError("Connection to the SuperLink is unavailable")

    monkeypatch.setattr(run_status, "run_info", gone)
    monkeypatch.setattr(run_status, "CONTACT_GRACE_S", 0.05)
    with pytest.raises(RuntimeError, match="unavailable"):
        run_status.follow_run(1, {}, echo=print, poll_s=0.01)


def test_an_installed_package_gets_a_flower_app_folder_written_for_it(tmp_path):
    """Without a source checkout, `server run` submits a folder naming the installed apps and
    carrying the run config that the ServerApp reads back into the same typed config."""
    from fedreid.deploy.flower_app import write_app_dir

    folder = write_app_dir(tmp_path / "flower-app")
    app = tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "clients.app:app"}
    assert from_flat(app["config"]) == load_config()
