"""Submit a run to a SuperLink, follow it to its end and tell whether it succeeded.

``flwr run`` exits 0 even when the ServerApp failed, so the outcome is read from
``flwr ls --run-id ID --format json`` ("finished:completed" / "finished:failed" /
"finished:stopped"). The ``flwr`` calls use a private, temporary FLWR_HOME holding one
connection entry, so the operator's ``~/.flwr/config.toml`` is never read or rewritten (and
a bare ``flwr log ID``, which would start a local SuperLink of its own, is never needed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedreid.deploy.processes import flower_env, flwr_command, flwr_json, stop_tree

CONNECTION = "fedreid"
COMPLETED = "finished:completed"
Echo = Callable[[str], None]


@dataclass(frozen=True)
class Connection:
    """Where the SuperLink is and how to trust it (``root_certificates`` None = insecure)."""

    address: str
    root_certificates: Path | None

    def config_toml(self) -> str:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f"address = {json.dumps(self.address)}"]
        if self.root_certificates is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {json.dumps(str(Path(self.root_certificates).resolve()))}")
        return "\n".join(lines) + "\n"


def check_connection(superlink: str, root_certificates: Path | None, insecure: bool) -> Connection:
    if ":" not in superlink:
        raise ValueError(f"--superlink {superlink!r} needs a port, e.g. {superlink}:9092")
    if insecure:
        return Connection(superlink, None)
    if root_certificates is None or not Path(root_certificates).is_file():
        raise ValueError(
            f"--root-certificates {root_certificates} is not a file; pass the federation's ca.crt "
            "(from `fedreid certs`), or --insecure for a SuperLink started with --insecure"
        )
    return Connection(superlink, Path(root_certificates))


@contextmanager
def flwr_cli_env(conn: Connection) -> Iterator[dict[str, str]]:
    """An environment whose FLWR_HOME holds just this connection (removed afterwards)."""
    home = Path(tempfile.mkdtemp(prefix="fedreid-flwr-cli-"))
    try:
        (home / "config.toml").write_text(conn.config_toml())
        yield flower_env(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def submit_run(app_dir: Path, run_config_file: Path, env: Mapping[str, str]) -> int:
    answer = flwr_json(["run", str(app_dir), CONNECTION, "--run-config", str(run_config_file)], env,
                       timeout=300)
    return int(answer["run-id"])


def run_info(run_id: int, env: Mapping[str, str]) -> dict[str, Any]:
    runs = flwr_json(["ls", CONNECTION, "--run-id", str(run_id)], env)["runs"]
    if not runs:
        raise RuntimeError(f"the SuperLink knows no run {run_id}")
    return runs[0]


def register_key(public_key: Path, name: str | None, env: Mapping[str, str]) -> int:
    args = ["supernode", "register", str(Path(public_key).resolve()), CONNECTION]
    return int(flwr_json([*args, *(["--name", name] if name else [])], env)["node-id"])


def unregister_node(node_id: int, env: Mapping[str, str]) -> None:
    flwr_json(["supernode", "unregister", str(node_id), CONNECTION], env)


def show_log(run_id: int, env: Mapping[str, str], timeout: float = 120.0) -> str:
    """The run's whole log so far (the ServerApp's output, as ``flwr log --show`` prints it)."""
    proc = subprocess.run(flwr_command("log", str(run_id), CONNECTION, "--show"), env=dict(env),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`flwr log {run_id}` failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def stop_run(run_id: int, env: Mapping[str, str]) -> None:
    flwr_json(["stop", str(run_id), CONNECTION], env)


def round_line(record: Mapping[str, Any]) -> str:
    """One human line per metrics.jsonl record (what the coordinator recorded)."""
    kind, rnd = record.get("kind"), record.get("round")
    if kind == "train":
        sites = record.get("sites", {})
        failures = record.get("failures", [])
        text = (f"round {rnd} trained: {len(sites)} site(s) ({', '.join(sorted(sites))}), mean prune "
                f"ratio {record.get('mean_prune_ratio', 0.0):.2f}, {record.get('bytes_up', 0) / 1e6:.1f} MB up")
        for f in failures:
            text += f"\n  failed: {f.get('site')} — {f.get('reason')}"
        return text
    if kind == "evaluate":
        return (f"round {rnd} evaluated: {len(record.get('sites', {}))} site(s), mean mAP "
                f"{record.get('mean_mAP', float('nan')):.3f}, Rank-1 {record.get('mean_rank1', float('nan')):.3f}")
    if kind == "admission":
        return f"site {record.get('site')} not admitted: {record.get('refused')}"
    return json.dumps(record)[:200]


class TracebackFilter:
    """Passes log lines to ``echo`` until the ServerApp reports an exception, then holds the
    traceback back (``hidden`` counts it): the run's reason is printed on its own, and the
    whole log stays available with `fedreid server log`."""

    MARK = "raised an exception"

    def __init__(self, echo: Echo):
        self.echo = echo
        self.hidden = 0

    def __call__(self, line: str) -> None:
        if self.hidden or self.MARK in line:
            self.hidden += 1
        else:
            self.echo(line)


class _LogFollower:
    """``flwr log RUN --stream`` in the background, each line handed to ``echo``."""

    def __init__(self, run_id: int, env: Mapping[str, str], echo: Echo):
        self.proc = subprocess.Popen(flwr_command("log", str(run_id), CONNECTION, "--stream"),
                                     env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.thread = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self.thread.start()

    def _pump(self, echo: Echo) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            echo(line.rstrip("\n"))

    def close(self, grace: float) -> None:
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            stop_tree(self.proc, timeout=5)
        self.thread.join(timeout=5)


CONTACT_GRACE_S = 60.0  # `server run` gives up on a SuperLink silent this long


def follow_run(run_id: int, env: Mapping[str, str], *, echo: Echo, record_echo: Echo | None = None,
               metrics_file: Path | None = None, timeout: float = 0.0, poll_s: float = 3.0) -> dict[str, Any]:
    """Stream the run's log and its round records until it finishes; returns ``flwr ls`` info.

    ``metrics_file`` (the run's metrics.jsonl, when this machine can see it) adds one line
    per round recorded from now on (a resumed run's earlier rounds are not repeated).
    ``timeout`` > 0 stops the run when it is exceeded (TimeoutError).
    """
    started = time.monotonic()
    follower = _LogFollower(run_id, env, TracebackFilter(echo))
    seen = len(metrics_file.read_text().splitlines()) if metrics_file and metrics_file.exists() else 0
    unreachable_since: float | None = None
    try:
        while True:
            try:
                info = run_info(run_id, env)
            except RuntimeError:
                # A busy SuperLink (waiting on its database) can miss a status query: only a
                # silence of CONTACT_GRACE_S means the coordinator is gone.
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= CONTACT_GRACE_S:
                    raise
                time.sleep(poll_s)
                continue
            unreachable_since = None
            if metrics_file is not None and metrics_file.exists():
                lines = metrics_file.read_text().splitlines()
                for line in lines[seen:]:
                    if line.strip():
                        (record_echo or echo)(round_line(json.loads(line)))
                seen = len(lines)
            if str(info.get("status", "")).startswith("finished"):
                return info
            if timeout > 0 and time.monotonic() - started > timeout:
                stop_run(run_id, env)
                raise TimeoutError(f"run {run_id} did not finish within --timeout {timeout:.0f} s; "
                                   "it was stopped")
            time.sleep(poll_s)
    finally:
        follower.close(grace=10.0)
