"""Command lines for Flower's deployment tools, and starting / waiting for / stopping them.

Flower 1.41 serves the Fleet, Control and Runtime APIs over HTTP(S) on one host:port; fedreid
binds that to loopback and puts a proxy in front for the sites (:mod:`fedreid.deploy.proxy`).
The SuperLink launches ``flower-superexec`` by bare name (so Flower's ``bin`` folder must be
on PATH) in a new session, and that runs the ServerApp; each SuperNode does the same for its
ClientApps. Those children watch their parent's pid, but a parent that is killed and not
reaped stays a zombie and they never notice — so :func:`stop_tree` collects the whole tree
first and stops every process by its pid (checked against its start time: pids are reused).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedreid.deploy.certs import TlsFiles

# Telemetry and update checks phone home; a site's process must not.
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}
NodeValue = str | int | float | bool
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def flower_bin(name: str) -> str:
    """The Flower executable installed beside this Python (the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ValueError(f"{name} is not installed; install fedreid's dependencies (flwr) in this "
                         "environment: pip install -e .")
    return found


def flower_env(flwr_home: str | os.PathLike | None = None,
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: quiet, Flower's bin folder first on PATH."""
    env = dict(os.environ if base is None else base)
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    return env


def check_port(port: int, flag: str = "--port") -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{flag} {port} is not a TCP port; use a number in 1..65535")
    return port


def superlink_command(*, host: str, port: int, database: Path, tls: TlsFiles | None,
                      supernode_auth: bool, log_file: Path | None = None) -> list[str]:
    """``flower-superlink`` with TLS (or ``--insecure`` when ``tls`` is None) and a database,
    run through ``server.superlink`` (a patient SQLite lock wait; Flower's own flags).

    Runtime dependency installation stays off: the coordinator runs the app in the
    environment fedreid is installed in, and may have no package index to install from.
    """
    check_port(port)
    if supernode_auth and tls is None:
        raise ValueError("--enable-supernode-auth needs TLS; drop --insecure and pass the "
                         "certificates (see `fedreid certs`)")
    if str(database) in ("", ":memory:"):
        raise ValueError("--database must be a file: without it a restarted SuperLink forgets every "
                         "site and run, and connected sites shut down")
    flower_bin("flower-superlink")  # Flower is installed here
    cmd = [sys.executable, "-m", "server.superlink", "--host", host, "--port", str(port),
           "--database", str(Path(database).resolve()), "--disable-runtime-dependency-installation"]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-certfile", str(tls.server_cert.resolve()), "--ssl-keyfile",
                str(tls.server_key.resolve()), "--ssl-ca-certfile", str(tls.ca_cert.resolve())]
    if supernode_auth:
        cmd.append("--enable-supernode-auth")
    if log_file is not None:
        cmd += ["--log-file", str(Path(log_file).resolve())]
    return cmd


def node_config_arg(config: Mapping[str, NodeValue]) -> str:
    """``key="text" n=3 flag=true``: Flower parses each value as TOML, so strings are quoted."""
    parts = []
    for key, value in config.items():
        if not re.match(r"^[A-Za-z0-9_-]+$", key):
            raise ValueError(f"node config key {key!r} must use letters, digits, '-' or '_'")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            if '"' in str(value) or "\\" in str(value):
                raise ValueError(f"node config {key}={value!r}: Flower cannot pass a value containing "
                                 "a quote or backslash; rename the folder or use another path")
            text = f'"{value}"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_command(*, superlink: str, root_certificates: Path | None, private_key: Path | None,
                      node_config: Mapping[str, NodeValue], runtime_port: int,
                      max_retries: int | None = None, max_wait_time: float | None = None) -> list[str]:
    """``flower-supernode`` for one site (``--insecure`` when ``root_certificates`` is None).

    Without ``max_retries``/``max_wait_time`` Flower retries an unreachable coordinator
    forever with exponential backoff (at most 20 s between tries) and logs every try.
    """
    check_port(runtime_port, "--runtime-port")
    if ":" not in superlink:
        raise ValueError(f"--superlink {superlink!r} needs a port, e.g. {superlink}:9092")
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink,
           "--port", str(runtime_port), "--node-config", node_config_arg(node_config)]
    if root_certificates is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(Path(root_certificates).resolve())]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(Path(private_key).resolve())]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def flwr_command(*args: str) -> list[str]:
    """A ``flwr`` CLI call (run, ls, log, stop, supernode ...)."""
    return [flower_bin("flwr"), *args]


def flwr_json(args: Sequence[str], env: Mapping[str, str], timeout: float = 120.0) -> dict:
    """Run a ``flwr ... --format json`` command and return its JSON answer.

    Flower prints the JSON on stdout (and banners around it), and reports errors as
    ``{"success": false, "error-message": ...}``; both cases raise with Flower's message.
    """
    try:
        proc = subprocess.run(flwr_command(*args, "--format", "json"), env=dict(env),
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`flwr {' '.join(args)}` got no answer within {timeout:.0f} s") from exc
    start, end = proc.stdout.find("{"), proc.stdout.rfind("}")
    try:
        answer = json.loads(proc.stdout[start:end + 1]) if start >= 0 else {}
    except json.JSONDecodeError:
        answer = {}
    if proc.returncode != 0 or not answer.get("success", False):
        reason = answer.get("error-message") or (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"`flwr {' '.join(args)}` failed: {reason}")
    return answer


def start_process(cmd: Sequence[str], *, log_file: Path, env: Mapping[str, str]) -> subprocess.Popen:
    """Start in its own session with stdout+stderr appended to ``log_file``."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        return subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=dict(env),
                                stdin=subprocess.DEVNULL, start_new_session=True)


def start_tied(cmd: Sequence[str], *, env: Mapping[str, str], sig: int = signal.SIGTERM,
               **popen: Any) -> subprocess.Popen:
    """Start ``cmd`` so that it gets ``sig`` when this process ends, however it ends (even by
    SIGKILL, and after this process has exec'd another program): a helper started for a
    SuperLink never outlives it. Linux only (prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork
    parent = os.getpid()

    def tie() -> None:
        if libc.prctl(PR_SET_PDEATHSIG, sig) != 0 or os.getppid() != parent:
            raise OSError(ctypes.get_errno(), "cannot tie the process to its parent (prctl)")

    return subprocess.Popen(list(cmd), env=dict(env), stdin=subprocess.DEVNULL, preexec_fn=tie, **popen)


def run_watched(cmd: Sequence[str], *, env: Mapping[str, str], on_line: Callable[[str], bool]) -> int:
    """Run ``cmd`` in the foreground with its output read line by line: each line is copied to
    stdout and handed to ``on_line``, which returns True to stop the process (SIGTERM).

    The child is SIGKILLed if this process dies (so killing this process is a crash of the
    child, as if it had been exec'd), and SIGINT / SIGTERM / SIGHUP are passed on to it.
    Returns its exit code.
    """
    proc = start_tied(cmd, env=env, sig=signal.SIGKILL, stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if on_line(line) and proc.poll() is None:
                proc.terminate()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    code = proc.wait()
    reader.join(timeout=2.0)  # its children may hold the pipe open; what they print is theirs
    return code


def exit_when_orphaned(*, grace_s: float, say: Callable[[str], None], poll_s: float = 1.0) -> threading.Thread:
    """End this process ``grace_s`` seconds after its parent dies (it is re-parented).

    Flower's ServerApp and ClientApp processes watch their launcher, but on its death they
    ask themselves to stop and then retry the dead SuperLink / SuperNode forever: a crash
    of the coordinator or a site would leave them running. ``say`` reports it first.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        say(f"this process's parent (pid {parent}) is gone; exiting in {grace_s:.0f} s")
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, daemon=True, name="exit-when-orphaned")
    thread.start()
    return thread


def port_free(host: str, port: int) -> bool:
    """Nothing listens on ``host:port`` yet (a bind would succeed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2,
             proc: subprocess.Popen | None = None) -> float:
    """Poll until ``predicate()``; returns the seconds it took. Fails early if ``proc`` exits."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {proc.returncode} first")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


def log_contains(log_file: Path, pattern: str) -> bool:
    path = Path(log_file)
    return path.exists() and re.search(pattern, path.read_text(errors="replace")) is not None


@dataclass(frozen=True)
class ProcessRef:
    """A process by pid *and* start time, so a pid the kernel has reused is never signalled."""

    pid: int
    started: int  # clock ticks after boot (/proc/<pid>/stat field 22)


def _stat(pid: int) -> list[str] | None:
    """The /proc/<pid>/stat fields after the command name (state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_ref(pid: int) -> ProcessRef | None:
    fields = _stat(pid)
    return ProcessRef(pid, int(fields[19])) if fields else None


def descendants(pid: int) -> list[ProcessRef]:
    """Every process below ``pid`` (children, grandchildren ...), parents first (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat(int(entry)) if entry.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            ref = process_ref(child)
            if ref:
                out.append(ref)
            todo.append(child)
    return out


def _same(ref: ProcessRef) -> bool:
    fields = _stat(ref.pid)
    return fields is not None and int(fields[19]) == ref.started


def alive(ref: ProcessRef) -> bool:
    """Running (not exited, not a zombie) and still the same process."""
    fields = _stat(ref.pid)
    return fields is not None and int(fields[19]) == ref.started and fields[0] != "Z"


def _signal(ref: ProcessRef, sig: int) -> None:
    if not _same(ref):
        return
    try:
        os.kill(ref.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_tree(proc: subprocess.Popen | ProcessRef, *, sig: int = signal.SIGTERM, timeout: float = 15.0,
              extra: Sequence[ProcessRef] = ()) -> list[ProcessRef]:
    """Stop a process and every descendant (``extra``: processes seen earlier, e.g. orphans).

    Sends ``sig`` to all of them, waits up to ``timeout`` s, then SIGKILLs what is left;
    returns what it signalled. A Popen is reaped so its children see it gone.
    """
    root = process_ref(proc.pid) if isinstance(proc, subprocess.Popen) else proc
    tree = [root, *descendants(root.pid)] if root is not None and _same(root) else []
    refs = [*tree, *extra]
    refs = list(dict.fromkeys(r for r in refs if r.pid != os.getpid()))
    for ref in refs:
        _signal(ref, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(proc, subprocess.Popen):
            proc.poll()
        if not any(alive(r) for r in refs):
            break
        time.sleep(0.1)
    for ref in refs:
        if alive(ref):
            _signal(ref, signal.SIGKILL)
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    return refs


OWNER_VAR = "FEDREID_SITE_OWNER"  # "<state dir>|<pid>:<start>" of the `site join` that started a process


def owner_tag(state: Path) -> str:
    """The value of :data:`OWNER_VAR` for the processes this `site join` starts."""
    me = process_ref(os.getpid())
    assert me is not None
    return f"{state}|{me.pid}:{me.started}"


def environ(pid: int) -> bytes:
    """The NUL-separated environment of ``pid`` (empty when gone or not ours)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def strays(state: Path) -> list[ProcessRef]:
    """Processes an earlier `site join` of the site with ``state`` left behind: tagged with its
    state folder by a `site join` that is gone. A killed site's SuperNode dies with it, but
    Flower's SuperExec and a ClientApp it had just started retry the dead SuperNode forever."""
    prefix = f"{OWNER_VAR}={state}|".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        tag = next((v[len(prefix):] for v in environ(int(entry)).split(b"\0") if v.startswith(prefix)), None)
        if tag is None:
            continue
        pid, _, started = tag.decode().partition(":")
        ref = process_ref(int(entry))
        if ref is not None and not alive(ProcessRef(int(pid), int(started))):
            found.append(ref)
    return found


def kill_strays(state: Path) -> list[int]:
    """SIGKILL :func:`strays`; returns their pids."""
    found = strays(state)
    for ref in found:
        _signal(ref, signal.SIGKILL)
    return [ref.pid for ref in found]


def kill_hard(proc: subprocess.Popen) -> list[ProcessRef]:
    """Simulate a crash: SIGKILL the process alone, reap it, return its orphaned descendants."""
    orphans = descendants(proc.pid)
    proc.kill()
    proc.wait()
    return orphans
