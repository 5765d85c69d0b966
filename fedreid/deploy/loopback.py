"""A whole deployment on one machine, driven through the `fedreid` commands as an operator
would: a coordinator (proxy + SuperLink) and sites as real processes on loopback.

The end-to-end tests and the soak benchmark use it to start, crash (SIGKILL, children left
as orphans, as in a real crash), restart and stop processes, and to check afterwards that
nothing was left behind: every process started here carries a tag in its environment, which
its children inherit, so :meth:`LoopbackDeployment.tagged` finds every one of them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from fedreid.deploy import processes

TAG_VAR = "FEDREID_LOOPBACK_TAG"
READY = r"Uvicorn running on https?://"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class LoopbackDeployment:
    """Processes started as ``python -m cli.main ...`` from ``checkout``, logs under
    ``root/logs/<name>-<n>.log`` (one file per start), stopped by pid."""

    def __init__(self, root: Path, checkout: Path, *, public_host: str = "127.0.0.1"):
        self.root = Path(root)
        self.checkout = Path(checkout)
        self.public_host = public_host
        self.port = free_port(public_host)
        self.control_port = free_port()
        self.superlink = f"{public_host}:{self.port}"
        self.ca = self.root / "certs" / "ca.crt"
        self.tag = uuid.uuid4().hex
        self.procs: dict[str, subprocess.Popen] = {}
        self.orphans: list[processes.ProcessRef] = []
        self.starts: dict[str, int] = {}
        self.env = processes.flower_env(self.root / "flwr-home")
        self.env.update({"PYTHONPATH": str(self.checkout), TAG_VAR: self.tag})

    # ---- commands ----------------------------------------------------------------------------
    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cli.main", *args]

    def cli(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run a `fedreid` command to its end; with ``check`` a non-zero exit raises."""
        proc = subprocess.run(self.command(*args), cwd=self.checkout, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"fedreid {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc

    def control(self) -> list[str]:
        """Connection flags for commands run on the coordinator (its loopback control port)."""
        return ["--superlink", f"127.0.0.1:{self.control_port}", "--root-certificates", str(self.ca)]

    # ---- processes ---------------------------------------------------------------------------
    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}-{self.starts.get(name, 0)}.log"

    def text(self, name: str) -> str:
        path = self.log(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        self.starts[name] = self.starts.get(name, 0) + 1
        self.procs[name] = processes.start_process(self.command(*args), log_file=self.log(name),
                                                   env={**self.env, **(env or {})})
        return self.procs[name]

    def wait_log(self, name: str, pattern: str, timeout: float, count: int = 1,
                 proc: subprocess.Popen | None = None) -> float:
        """Seconds until ``pattern`` occurs ``count`` times in the current log of ``name``."""
        return processes.wait_for(lambda: len(re.findall(pattern, self.text(name))) >= count, timeout,
                                  f"{name}: {pattern!r}", proc=proc)

    def start_coordinator(self, *, auth: bool = True, timeout: float = 120) -> subprocess.Popen:
        """`fedreid server start` (once a crashed one's proxy has let go of the port)."""
        processes.wait_for(lambda: processes.port_free(self.public_host, self.port)
                           and processes.port_free("127.0.0.1", self.control_port), 60, "the coordinator's ports free")
        proc = self.start("coordinator", "server", "start", "--host", self.public_host, "--port", str(self.port),
                          "--control-port", str(self.control_port), "--certs", str(self.root / "certs"),
                          "--database", str(self.root / "coordinator" / "superlink.db"),
                          *(["--enable-supernode-auth"] if auth else []))
        self.wait_log("coordinator", READY, timeout, proc=proc)
        return proc

    def start_site(self, site: str, *, key: str | None = None, data: str | None = None,
                   env: dict[str, str] | None = None, extra: Sequence[str] = ()) -> subprocess.Popen:
        """`fedreid site join` for ``site`` (its own key, data and state folders unless told)."""
        return self.start(site, "site", "join", "--site", site, "--data", str(self.root / "data" / (data or site)),
                          "--superlink", self.superlink, "--root-certificates", str(self.ca),
                          "--key", str(self.root / "keys" / f"{key or site}.key"), "--no-check",
                          "--state-dir", str(self.root / "state" / site), "--runtime-port", str(free_port()),
                          "--device", "cpu", "--threads", "1", *extra, env=env)

    def crash(self, name: str) -> None:
        """SIGKILL the process alone: its children are orphaned, as in a real crash."""
        self.orphans += processes.kill_hard(self.procs.pop(name))

    def stop(self, name: str) -> None:
        processes.stop_tree(self.procs.pop(name), timeout=15)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for ref in self.orphans:
            processes.stop_tree(ref, timeout=5)

    # ---- what is running ---------------------------------------------------------------------
    def tagged(self) -> list[tuple[int, str]]:
        """Every live process started here or by one of them: (pid, command line)."""
        marker = f"{TAG_VAR}={self.tag}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and marker in processes.environ(int(entry)):
                ref = processes.process_ref(int(entry))
                if ref is not None and processes.alive(ref):
                    found.append((int(entry), _cmdline(int(entry))))
        return sorted(found)

    def kill_tagged(self) -> None:
        """Last resort after a failed check: nothing of this deployment survives it."""
        for pid, _ in self.tagged():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def memory_mb(self, needle: str) -> float:
        """Resident memory of the live tagged processes whose command line holds ``needle``."""
        return sum(rss_mb(pid) for pid, cmd in self.tagged() if needle in cmd)
