"""Real processes on 127.0.0.1: a SuperLink and three SuperNodes, TLS and site authentication.

One story, in the order an operator would live it, through the `fedreid` commands:

1. certificates and site keys are created; the keys of three sites are registered;
2. a site started while the coordinator is down retries, and joins once it is up;
3. a site whose key was never registered is refused;
4. two rounds of FedKLPR on tiny synthetic sites: one site is killed in round one — the
   round completes with the other two and records the failure; the site restarts with the
   same identity;
5. the coordinator is killed in round two, restarted on its database, and the run resumed:
   it continues at round two, loses no finished round, and the sites' private state
   (their pruning masks) is restored from their state files.

The measured recovery times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedreid.data.synth import generate_synthetic8
from fedreid.deploy import processes
from fedreid.report import load_records

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SITES = ["market", "cuhk01", "ilids"]
RUN_OVERRIDES = [
    "data.height=32", "data.width=16", "fl.rounds=2", "eval.every=2", "train.batch_size=16",
    "train.max_batches=2", "eval.batch_size=64", "method.capr.eps=0.7", "method.capr.min_samples=2",
    "prune.step=0.3", "prune.target=0.5", "crr.delta=1.0", "device=cpu", "sim.client_cpus=1",
    "fl.round_timeout=300",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """Starts `python -m cli.main ...` processes and stops every one by pid."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.ca = tmp / "certs" / "ca.crt"
        self.procs: dict[str, subprocess.Popen] = {}
        self.orphans: list[processes.ProcessRef] = []
        self.env = processes.flower_env(tmp / "flwr-home")
        self.env["PYTHONPATH"] = str(ROOT)
        self.starts: dict[str, int] = {}

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def log(self, name: str) -> Path:
        return self.tmp / "logs" / f"{name}-{self.starts.get(name, 0)}.log"

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        self.starts[name] = self.starts.get(name, 0) + 1
        cmd = [sys.executable, "-m", "cli.main", *args]
        self.procs[name] = processes.start_process(cmd, log_file=self.log(name), env={**self.env, **(env or {})})
        return self.procs[name]

    def text(self, name: str) -> str:
        path = self.log(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, name: str, pattern: str, timeout: float, proc: subprocess.Popen | None = None,
                 count: int = 1) -> float:
        return processes.wait_for(lambda: len(re.findall(pattern, self.text(name))) >= count, timeout,
                                  f"{name}: {pattern!r}", proc=proc)

    def start_superlink(self) -> subprocess.Popen:
        proc = self.start("superlink", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
                          "--certs", str(self.tmp / "certs"), "--database", str(self.tmp / "coord" / "link.db"),
                          "--enable-supernode-auth")
        self.wait_log("superlink", r"Uvicorn running on https", 90, proc)
        return proc

    def start_site(self, site: str, key: str | None = None, data: str | None = None,
                   env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.start(site, "site", "join", "--site", site, "--data", str(self.tmp / "data" / (data or site)),
                          "--superlink", self.superlink, "--root-certificates", str(self.ca),
                          "--key", str(self.tmp / "keys" / f"{key or site}.key"), "--no-check",
                          "--state-dir", str(self.tmp / "state" / site),
                          "--runtime-port", str(free_port()), "--device", "cpu", env=env)

    def connection(self) -> list[str]:
        return ["--superlink", self.superlink, "--root-certificates", str(self.ca)]

    def crash(self, name: str) -> None:
        """SIGKILL the process alone (its children are orphaned, as in a real crash)."""
        self.orphans += processes.kill_hard(self.procs.pop(name))

    def stop_all(self) -> None:
        for proc in self.procs.values():
            processes.stop_tree(proc, timeout=10)
        for ref in self.orphans:
            processes.stop_tree(ref, timeout=5)


@pytest.fixture
def deployment(tmp_path):
    dep = Deployment(tmp_path)
    try:
        yield dep
    finally:
        dep.stop_all()
        for name in dep.starts:  # keep the evidence of a failure in the test output
            tail = dep.text(name)[-1500:]
            if tail:
                print(f"\n----- {name} log (tail) -----\n{tail}")


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in load_records(run_dir) if r["kind"] == "train"] if (run_dir / "metrics.jsonl").exists() else []


def test_deployment_survives_site_and_coordinator_crashes(deployment, tmp_path):
    dep = deployment
    timings: dict[str, float] = {}
    generate_synthetic8(tmp_path / "data", scale=0.05, seed=0, size=(32, 16), sites=SITES, min_test_ids=6,
                        workers=1)
    dep.cli("certs", "--host", "127.0.0.1", "--out", str(tmp_path / "certs"))
    dep.cli("keys", "create", *SITES, "rogue", "--out", str(tmp_path / "keys"))
    assert (tmp_path / "keys" / "market.key").stat().st_mode & 0o077 == 0

    # 1. Register the three sites' keys, then take the coordinator down again.
    dep.start_superlink()
    registered = dep.cli("keys", "register", *(str(tmp_path / "keys" / f"{s}.pub") for s in SITES),
                         *dep.connection())
    assert registered.stdout.count("→ node") == 3
    processes.stop_tree(dep.procs.pop("superlink"))

    # 2. A site started before the coordinator retries, then joins.
    ilids = dep.start_site("ilids")
    dep.wait_log("ilids", r"Connection attempt failed, retrying", 60, ilids)
    started = time.monotonic()
    dep.start_superlink()
    dep.wait_log("ilids", r"Connection successful after", 120, ilids)
    timings["site started first: joined after coordinator start"] = time.monotonic() - started

    # 3. Unregistered key: refused.
    rogue = dep.start_site("rogue-site", key="rogue", data="market")
    assert rogue.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in dep.text("rogue-site")
    dep.procs.pop("rogue-site")

    dep.start_site("market")
    dep.start_site("cuhk01")
    dep.wait_log("cuhk01", r"SuperNode ID: \d+", 60, dep.procs["cuhk01"])
    cuhk01_id = re.search(r"SuperNode ID: (\d+)", dep.text("cuhk01")).group(1)

    # 4. Two rounds; cuhk01 killed during round one's training.
    runs = tmp_path / "runs"
    runner = dep.start("run", "server", "run", *RUN_OVERRIDES, *dep.connection(), "--sites", ",".join(SITES),
                       "--run-dir", str(runs))
    dep.wait_log("cuhk01", r"Receiving: train message", 600, runner)
    dep.crash("cuhk01")
    killed = time.monotonic()
    run_dir = next(runs.glob("flwr-*"))
    processes.wait_for(lambda: len(_train_records(run_dir)) >= 1, 400, "round 1 recorded", proc=runner)
    timings["site killed → round 1 closed with the failure"] = time.monotonic() - killed
    round1 = _train_records(run_dir)[0]
    assert sorted(round1["sites"]) == ["ilids", "market"]
    assert [f["site"] for f in round1["failures"]] == ["cuhk01"], round1["failures"]

    restarted = time.monotonic()
    dep.start_site("cuhk01")
    dep.wait_log("cuhk01", r"SuperNode ID: \d+", 90, dep.procs["cuhk01"])
    timings["killed site restarted → rejoined"] = time.monotonic() - restarted
    assert re.search(r"SuperNode ID: (\d+)", dep.text("cuhk01")).group(1) == cuhk01_id  # same identity

    # 5. Coordinator killed in round two, restarted on its database, run resumed.
    dep.wait_log("market", r"Receiving: train message", 400, runner, count=2)
    dep.crash("superlink")
    crashed = time.monotonic()
    assert runner.wait(timeout=180) != 0
    assert "--resume" in dep.text("run")
    assert [r["round"] for r in _train_records(run_dir)] == [1]  # round 2 never finished
    dep.start_superlink()
    timings["coordinator crash → SuperLink back"] = time.monotonic() - crashed
    resumed = dep.start("resume", "server", "run", *dep.connection(), "--resume", str(run_dir),
                        "--run-dir", str(runs))
    processes.wait_for(lambda: len(_train_records(run_dir)) >= 2, 600, "round 2 recorded", proc=resumed)
    timings["coordinator crash → round 2 finished by the resumed run"] = time.monotonic() - crashed
    assert resumed.wait(timeout=600) == 0, dep.text("resume")
    timings["coordinator crash → resumed run completed"] = time.monotonic() - crashed

    records = load_records(run_dir)
    assert [r["round"] for r in records if r["kind"] == "train"] == [1, 2]
    assert [r["round"] for r in records if r["kind"] == "evaluate"] == [0, 2]
    round2 = _train_records(run_dir)[1]
    assert sorted(round2["sites"]) == sorted(SITES) and not round2["failures"]
    # market's mask came back from its state file: round 2 prunes on top of round 1's 30 %.
    assert round1["sites"]["market"]["prune_ratio"] == pytest.approx(0.3, abs=0.02)
    assert round2["sites"]["market"]["prune_ratio"] == pytest.approx(0.5, abs=0.02)
    assert (tmp_path / "state" / "market" / "market.pt").exists()
    print("\nrecovery timings (s):\n" + json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
    print(f"cores: {os.cpu_count()}")


HOSTILE_FAULTS = ["nonfinite", "shape", "norm", "sparsity"]
# What the coordinator must say when it drops each fault (server/strategy.py, fedreid/fl/codec.py).
FAULT_REASONS = {
    "nonfinite": r"NaN or infinity",
    "shape": r"shape .* != expected",
    "norm": r"update norm .* exceeds agg.max_update_norm",
    "sparsity": r"declared sparsity",
}


def test_hostile_site_is_rejected_every_round(deployment, tmp_path):
    """One site of three sends a malformed or hostile update each round (fault injection):
    non-finite values, a wrong shape, an inflated norm, a false pruning ratio. Every one is
    rejected with its reason in the round's metrics and the coordinator's log; the two honest
    sites are aggregated and the run completes."""
    dep = deployment
    generate_synthetic8(tmp_path / "data", scale=0.05, seed=0, size=(32, 16), sites=SITES, min_test_ids=6,
                        workers=1)
    dep.cli("certs", "--host", "127.0.0.1", "--out", str(tmp_path / "certs"))
    dep.cli("keys", "create", *SITES, "--out", str(tmp_path / "keys"))
    dep.start_superlink()
    dep.cli("keys", "register", *(str(tmp_path / "keys" / f"{s}.pub") for s in SITES), *dep.connection())
    hostile = "cuhk01"
    for site in SITES:
        env = {"FEDREID_INJECT_FAULTS": ",".join(HOSTILE_FAULTS)} if site == hostile else None
        dep.start_site(site, env=env)
    for site in SITES:
        dep.wait_log(site, r"SuperNode ID: \d+", 60, dep.procs[site])
    runs = tmp_path / "runs"
    overrides = [o for o in RUN_OVERRIDES if not o.startswith(("fl.rounds", "eval.every"))]
    runner = dep.start("run", "server", "run", *overrides, f"fl.rounds={len(HOSTILE_FAULTS)}",
                       f"eval.every={len(HOSTILE_FAULTS)}", "agg.max_update_norm=1000",
                       *dep.connection(), "--sites", ",".join(SITES), "--run-dir", str(runs))
    assert runner.wait(timeout=900) == 0, dep.text("run")

    records = _train_records(next(runs.glob("flwr-*")))
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    honest = sorted(s for s in SITES if s != hostile)
    for record, fault in zip(records, HOSTILE_FAULTS, strict=True):
        rejected = [f for f in record["failures"] if f["site"] == hostile]
        assert len(rejected) == 1 and re.search(FAULT_REASONS[fault], rejected[0]["reason"]), (fault, record)
        assert hostile not in record["sites"]
        # Every honest site is aggregated, unless Flower's transport lost its reply (a
        # transport error, never a validation one): under heavy load a SuperNode can answer
        # an in-flight message with "ClientApp stopped responding" when the previous
        # ClientApp's token expires.
        others = [f for f in record["failures"] if f["site"] != hostile]
        assert all(f["reason"].startswith("error ") for f in others), (fault, others)
        assert sorted([*record["sites"], *(f["site"] for f in others)]) == honest, (fault, record)
        assert record["sites"], (fault, record)
        assert all(np.isfinite(s["weight"]) for s in record["sites"].values())
    assert len(re.findall(r"rejected reply from site cuhk01", dep.text("run"))) >= len(HOSTILE_FAULTS)
    assert len(re.findall(r"fault injection", dep.text(hostile))) == len(HOSTILE_FAULTS)
