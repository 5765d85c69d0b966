"""A loopback deployment under a fault schedule: are rounds, models and state still right?

    python -m sims.bench.soak [--rounds 15] [--sites 4] [--site-kills 3] [--repeats 2] [--seed 0]

Starts a coordinator and ``--sites`` sites as real processes on 127.0.0.1 (TLS, registered
keys, the proxy), runs FedKLPR on tiny synthetic sites, and follows a schedule drawn from
``--seed``: sites SIGKILLed while they train a round (restarted once the round closed without
them), the coordinator SIGKILLed once mid-round (restarted, the run resumed), and one site
sending one hostile reply (non-finite values). Each fault sits at a protocol point (a site
received its instruction), so a rerun meets the same faults in the same rounds. The schedule
runs ``--repeats`` times in the same deployment, each a new run, so a later run must not use
an earlier run's site state. Afterwards it checks: every round committed exactly once, each
fault's effect recorded, the final global models of the repeats identical, each site's state
only under its own run, no process left over, and the coordinator's memory per round; then
prints one table.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedreid.data.synth import generate_synthetic8
from fedreid.deploy import processes
from fedreid.deploy.loopback import LoopbackDeployment
from fedreid.report import load_records

ROOT = Path(__file__).resolve().parents[2]
SITE_POOL = ["market", "cuhk01", "ilids", "viper", "prid", "3dpes"]
HOSTILE_FAULT = "nonfinite"
RECEIVED_TRAIN = r"Receiving: train message"
ORPHAN_GRACE_S = 30.0  # children of a killed process must have exited this long after the runs
OVERRIDES = [
    "data.height=32", "data.width=16", "model.arch=mobilenet_v2", "train.batch_size=16", "train.max_batches=2",
    "eval.batch_size=64",
    "method.capr.eps=0.7", "method.capr.min_samples=2", "prune.step=0.2", "prune.target=0.6",
    "crr.delta=1.0", "device=cpu", "fl.round_timeout=240", "fl.node_wait=240",
]


@dataclass(frozen=True)
class Fault:
    """What happens in ``round``: ``site-kill`` (``site`` SIGKILLed while it trains the
    round), ``coordinator-kill`` (the coordinator SIGKILLed once ``site`` got the round's
    instruction) or ``hostile`` (``site``'s reply to the round is corrupted)."""

    round: int
    kind: str
    site: str
    delay_s: float = 0.0  # after the site received its instruction


def make_schedule(sites: list[str], rounds: int, site_kills: int, seed: int) -> list[Fault]:
    """Distinct rounds (never round 1, where no state exists yet) for each fault, drawn with ``seed``."""
    if site_kills + 2 > rounds - 1:
        raise ValueError(f"--rounds {rounds} is too few for {site_kills} site kills, a coordinator kill and a "
                         "hostile reply in distinct rounds after round 1")
    rng = np.random.default_rng(seed)
    picked = [int(r) for r in rng.choice(np.arange(2, rounds + 1), size=site_kills + 2, replace=False)]
    kinds = ["coordinator-kill", "hostile", *["site-kill"] * site_kills]
    faults = [Fault(r, kind, str(rng.choice(sites)), round(float(rng.uniform(0, 3)), 1))
              for r, kind in zip(picked, kinds, strict=True)]
    return sorted(faults, key=lambda f: f.round)


@dataclass
class RunOutcome:
    run_dir: Path
    recoveries: list[tuple[str, float]] = field(default_factory=list)  # (fault, seconds until its round closed)
    serverapp_mb: list[float] = field(default_factory=list)  # per committed round
    superlink_mb: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_rounds(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [r["round"] for r in load_records(run_dir) if r["kind"] == "train"] if path.exists() else []


class RoundWatch:
    """Samples the coordinator's memory each time a round is committed (background thread)."""

    def __init__(self, dep: LoopbackDeployment, run_dir: Path, outcome: RunOutcome):
        self.dep, self.run_dir, self.outcome = dep, run_dir, outcome
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        seen = 0
        while not self.done.is_set():
            committed = len(train_rounds(self.run_dir))
            if committed > seen:
                seen = committed
                self.outcome.serverapp_mb.append(self.dep.memory_mb("flwr-serverapp"))
                self.outcome.superlink_mb.append(self.dep.memory_mb("server.superlink"))
            time.sleep(1.0)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def _wait(what: str, predicate: Callable[[], bool], timeout: float, runner: subprocess.Popen | None = None) -> float:
    """Seconds until ``predicate``; fails at once when the run's `server run` ends first."""
    return processes.wait_for(predicate, timeout, what, interval=1.0, proc=runner)


def run_schedule(dep: LoopbackDeployment, sites: list[str], rounds: int, schedule: list[Fault],
                 name: str, echo: Callable[[str], None]) -> RunOutcome:
    """One run of the schedule in a running deployment; returns when the run completed."""
    runs = dep.root / "runs" / name
    overrides = [*OVERRIDES, f"fl.rounds={rounds}", f"eval.every={rounds}"]
    started = time.monotonic()
    runner = dep.start(f"{name}-run", "server", "run", *overrides, "--sites", ",".join(sites),
                       "--run-dir", str(runs), *dep.control())
    _wait("run folder", lambda: any(runs.glob("run-*/config.yaml")), 300)
    outcome = RunOutcome(next(runs.glob("run-*")))
    watch = RoundWatch(dep, outcome.run_dir, outcome)
    try:
        for fault in schedule:
            if fault.kind == "hostile":
                continue
            _wait(f"round {fault.round - 1} committed",
                  lambda r=fault.round: len(train_rounds(outcome.run_dir)) >= r - 1, 1800, runner)
            before = len(re.findall(RECEIVED_TRAIN, dep.text(fault.site)))
            dep.wait_log(fault.site, RECEIVED_TRAIN, 900, count=before + 1, proc=runner)
            time.sleep(fault.delay_s)
            hit = time.monotonic()
            if fault.kind == "site-kill":
                echo(f"round {fault.round}: SIGKILL site {fault.site}")
                dep.crash(fault.site)
                _wait(f"round {fault.round} closed", lambda r=fault.round: r in train_rounds(outcome.run_dir), 900,
                      runner)
                outcome.recoveries.append((f"site {fault.site} killed in round {fault.round} → round closed",
                                           time.monotonic() - hit))
                dep.start_site(fault.site, env=hostile_env(schedule, fault.site))
                dep.wait_log(fault.site, r"SuperNode ID: \d+", 300)
                outcome.recoveries.append((f"site {fault.site} restarted → rejoined", time.monotonic() - hit))
            else:
                echo(f"round {fault.round}: SIGKILL the coordinator")
                dep.crash("coordinator")
                runner.wait(timeout=300)  # `server run` loses the SuperLink and exits
                dep.start_coordinator()
                outcome.recoveries.append(("coordinator killed → back", time.monotonic() - hit))
                runner = dep.start(f"{name}-resume", "server", "run", "--resume", str(outcome.run_dir),
                                   "--run-dir", str(runs), *dep.control())
                _wait(f"round {fault.round} redone", lambda r=fault.round: r in train_rounds(outcome.run_dir), 1800,
                      runner)
                outcome.recoveries.append((f"coordinator killed in round {fault.round} → round committed",
                                           time.monotonic() - hit))
        code = runner.wait(timeout=3600)
        if code != 0:
            raise RuntimeError(f"{name}: `fedreid server run` exited {code}:\n{dep.text(name + '-run')[-3000:]}")
    finally:
        watch.stop()
    outcome.seconds = time.monotonic() - started
    return outcome


def hostile_env(schedule: list[Fault], site: str) -> dict[str, str] | None:
    rounds = [f.round for f in schedule if f.kind == "hostile" and f.site == site]
    return {"FEDREID_INJECT_FAULTS": ",".join(f"{HOSTILE_FAULT}@{r}" for r in rounds)} if rounds else None


def schedule_problems(run_dir: Path, rounds: int, schedule: list[Fault]) -> list[str]:
    """What the run's records say against the schedule: each round committed once, each
    fault's round without that site, a reason for it."""
    problems = []
    records = [r for r in load_records(run_dir) if r["kind"] == "train"]
    committed = [r["round"] for r in records]
    if committed != list(range(1, rounds + 1)):
        problems.append(f"committed rounds {committed}, wanted each of 1..{rounds} once")
    by_round = {r["round"]: r for r in records}
    for fault in schedule:
        record = by_round.get(fault.round, {})
        if fault.kind == "coordinator-kill":
            continue
        failed = {f["site"]: f["reason"] for f in record.get("failures", [])}
        if fault.site in record.get("sites", {}) or fault.site not in failed:
            problems.append(f"round {fault.round}: {fault.kind} of {fault.site} not recorded as a failure")
        elif fault.kind == "hostile" and "NaN or infinity" not in failed[fault.site]:
            problems.append(f"round {fault.round}: hostile reply rejected for another reason: {failed[fault.site]}")
    return problems


def state_problems(dep: LoopbackDeployment, sites: list[str], run_dirs: list[Path]) -> list[str]:
    """Each site keeps state only in folders named after the runs, and each run's state
    started in that run (its first committed round is the site's first trained round)."""
    names = {d.name for d in run_dirs}
    problems = []
    for site in sites:
        folders = {p.name for p in (dep.root / "state" / site).iterdir() if p.is_dir() and not p.name.startswith(".")}
        if folders != names:
            problems.append(f"{site}: state folders {sorted(folders)}, wanted one per run {sorted(names)}")
    for run_dir in run_dirs:
        first = next(r for r in load_records(run_dir) if r["kind"] == "train")
        stale = {s: m["prune_ratio"] for s, m in first["sites"].items() if m.get("pruned_this_round") == 1
                 and m["prune_ratio"] > 0.2 + 1e-3}
        if stale:
            problems.append(f"{run_dir.name}: round 1 starts from earlier pruning at {stale}")
    return problems


def final_model(run_dir: Path) -> dict[str, np.ndarray]:
    import torch

    return torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)["global_state"]


def model_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
               if np.asarray(a[k]).size else 0.0 for k in a)


def growth_mb(samples: list[float]) -> float:
    """Memory at the last committed round above the median of the first three."""
    live = [s for s in samples if s > 0]
    return live[-1] - float(np.median(live[:3])) if len(live) >= 4 else float("nan")


@dataclass
class SoakReport:
    schedule: list[Fault]
    outcomes: list[RunOutcome]
    problems: list[str]
    difference: float
    orphans: list[processes.ProcessRef]  # children of killed processes still alive after the runs
    leftover: list[tuple[int, str]]  # processes alive after stopping the deployment

    def table(self) -> str:
        lines = ["| figure | value |", "|---|---|"]
        first = self.outcomes[0]
        rounds = train_rounds(first.run_dir)
        lines.append(f"| rounds per run × runs | {len(rounds)} × {len(self.outcomes)} |")
        lines.append("| faults per run | " + "; ".join(f"r{f.round} {f.kind} {f.site}" for f in self.schedule) + " |")
        for i, outcome in enumerate(self.outcomes, 1):
            for what, seconds in outcome.recoveries:
                lines.append(f"| run {i}: {what} | {seconds:.0f} s |")
            lines.append(f"| run {i}: wall time | {outcome.seconds:.0f} s |")
            lines.append(f"| run {i}: ServerApp memory peak / growth after round 3 | "
                         f"{max(outcome.serverapp_mb, default=0):.0f} MB / {growth_mb(outcome.serverapp_mb):+.0f} MB |")
            lines.append(f"| run {i}: SuperLink memory peak / growth after round 3 | "
                         f"{max(outcome.superlink_mb, default=0):.0f} MB / {growth_mb(outcome.superlink_mb):+.0f} MB |")
        lines.append(f"| largest difference of the final global models | {self.difference:.3g} |")
        lines.append(f"| children of killed processes alive {ORPHAN_GRACE_S:.0f} s after the runs | {len(self.orphans)} |")
        lines.append(f"| processes left after stopping | {len(self.leftover)} |")
        lines.append(f"| problems | {len(self.problems)} |")
        return "\n".join(lines) + "\n" + "".join(f"\n- {p}" for p in self.problems)


def soak(root: Path, *, sites: list[str], rounds: int, site_kills: int, repeats: int, seed: int,
         echo: Callable[[str], None] = print) -> SoakReport:
    """Build the deployment in ``root``, run the schedule ``repeats`` times, check, stop."""
    schedule = make_schedule(sites, rounds, site_kills, seed)
    echo("schedule: " + json.dumps([f.__dict__ for f in schedule]))
    dep = LoopbackDeployment(root, ROOT)
    outcomes: list[RunOutcome] = []
    try:
        generate_synthetic8(root / "data", scale=0.05, seed=0, size=(32, 16), sites=sites, min_test_ids=6, workers=1)
        dep.cli("certs", "--host", "127.0.0.1", "--out", str(root / "certs"))
        dep.cli("keys", "create", *sites, "--out", str(root / "keys"))
        dep.start_coordinator()
        dep.cli("keys", "register", *(str(root / "keys" / f"{s}.pub") for s in sites), *dep.control())
        for site in sites:
            dep.start_site(site, env=hostile_env(schedule, site))
        for site in sites:
            dep.wait_log(site, r"SuperNode ID: \d+", 300)
        for i in range(repeats):
            echo(f"run {i + 1} of {repeats}")
            outcomes.append(run_schedule(dep, sites, rounds, schedule, f"r{i + 1}", echo))
        problems = [p for o in outcomes for p in schedule_problems(o.run_dir, rounds, schedule)]
        problems += state_problems(dep, sites, [o.run_dir for o in outcomes])
        models = [final_model(o.run_dir) for o in outcomes]
        difference = max((model_difference(models[0], m) for m in models[1:]), default=0.0)
        time.sleep(ORPHAN_GRACE_S)
        orphans = [r for r in dep.orphans if processes.alive(r)]
        problems += [f"orphan of a killed process still running: pid {r.pid}" for r in orphans]
    finally:
        dep.stop_all()
    leftover = dep.tagged()
    dep.kill_tagged()
    problems += [f"left running after stop: pid {pid} {cmd[:120]}" for pid, cmd in leftover]
    if repeats > 1 and difference != 0.0:
        problems.append(f"the repeats' final global models differ (largest difference {difference:.3g})")
    return SoakReport(schedule, outcomes, problems, difference, orphans, leftover)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--site-kills", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    if not 2 <= args.sites <= len(SITE_POOL):
        raise SystemExit(f"--sites {args.sites}: use 2..{len(SITE_POOL)}")
    root = Path(args.out or tempfile.mkdtemp(prefix="fedreid-soak-"))
    # SIGTERM as Ctrl-C: unwind, so the deployment's processes are stopped, not orphaned
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report = soak(root, sites=SITE_POOL[:args.sites], rounds=args.rounds, site_kills=args.site_kills,
                  repeats=args.repeats, seed=args.seed,
                  echo=lambda s: print(f"{time.strftime('%H:%M:%S')} {s}", flush=True))
    print("\n" + report.table() + f"\nlogs and runs: {root}")
    (root / "soak.md").write_text(report.table())
    raise SystemExit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
