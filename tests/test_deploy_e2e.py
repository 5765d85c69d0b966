"""Real processes on loopback: a coordinator (proxy + SuperLink, TLS, site authentication)
and four sites, driven through the `fedreid` commands (fedreid.deploy.loopback).

The coordinator's public port is on 127.0.0.2 (a second loopback address standing in for
its network address); its control port is on 127.0.0.1. One story, in the order an operator
would live it:

1. certificates and keys; registering a key binds it to its site (a second key for a site
   is refused); `keys list` names the sites;
2. from the public address, run submission and the control API are refused (the proxy
   logs it) and the control port is not there at all;
3. a site started while the coordinator is down retries, and joins once it is up;
4. an unregistered key, plain HTTP against TLS, and a node claiming another site's name are
   each refused with a message that says what to do;
5. a run of three sites while a fourth (viper) is connected: viper is left alone; one site
   is killed in round one — the round completes with the others and records the failure as
   such; it rejoins with the same identity; the coordinator is killed in round two,
   restarted and the run resumed: round two is committed exactly once, results as a
   simulation writes them, each site's state in its run's folder;
6. a run that cannot start prints its reason, not a traceback, and `server log` has it all.

The measured recovery times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from fedreid.data.synth import generate_synthetic8
from fedreid.deploy import processes, run_status
from fedreid.deploy.loopback import LoopbackDeployment
from fedreid.report import load_records

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SITES = ["market", "cuhk01", "ilids"]
OUTSIDER = "viper"  # registered and connected, but not in the run
RUN_OVERRIDES = [
    "data.height=32", "data.width=16", "model.arch=mobilenet_v2", "fl.rounds=2", "eval.every=2", "train.batch_size=16",
    "train.max_batches=2", "eval.batch_size=64", "method.capr.eps=0.7", "method.capr.min_samples=2",
    "prune.step=0.3", "prune.target=0.5", "crr.delta=1.0", "device=cpu", "fl.round_timeout=300",
    "fl.node_wait=300",
]


@pytest.fixture
def deployment(tmp_path):
    dep = LoopbackDeployment(tmp_path, ROOT, public_host="127.0.0.2")
    try:
        yield dep
    finally:
        dep.stop_all()
        dep.kill_tagged()
        for name in dep.starts:  # keep the evidence of a failure in the test output
            tail = dep.text(name)[-1500:]
            if tail:
                print(f"\n----- {name} log (tail) -----\n{tail}")


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in load_records(run_dir) if r["kind"] == "train"] if (run_dir / "metrics.jsonl").exists() else []


def _setup(dep: LoopbackDeployment, sites: list[str], extra_keys: tuple[str, ...] = ()) -> None:
    generate_synthetic8(dep.root / "data", scale=0.05, seed=0, size=(32, 16), sites=sites, min_test_ids=6,
                        workers=1)
    dep.cli("certs", "--host", dep.public_host, "--out", str(dep.root / "certs"))
    dep.cli("keys", "create", *sites, *extra_keys, "--out", str(dep.root / "keys"))


@pytest.mark.timeout(1800)
def test_operators_story_on_loopback(deployment):
    dep = deployment
    timings: dict[str, float] = {}
    everyone = [*SITES, OUTSIDER]
    _setup(dep, everyone, extra_keys=("rogue",))
    assert (dep.root / "keys" / "market.key").stat().st_mode & 0o077 == 0

    # 1. Keys are bound to sites.
    dep.start_coordinator()
    registered = dep.cli("keys", "register", *(str(dep.root / "keys" / f"{s}.pub") for s in everyone), *dep.control())
    assert all(f"as site {s} → node" in registered.stdout for s in everyone), registered.stdout
    again = dep.cli("keys", "register", str(dep.root / "keys" / "rogue.pub"), *dep.control(), check=False)
    assert again.returncode == 0  # a new site: fine
    dep.cli("keys", "unregister", "rogue", *dep.control())
    twice = dep.cli("keys", "register", str(dep.root / "keys" / "market.pub"), *dep.control(), check=False)
    assert twice.returncode == 1 and "already registered" in twice.stdout
    listed = dep.cli("keys", "list", *dep.control()).stdout
    assert all(re.search(rf"{s}\s+│\s+\d+", listed) for s in everyone), listed

    # 2. The control API is not served on the public address.
    public = ["--superlink", dep.superlink, "--root-certificates", str(dep.ca)]
    refused = dep.cli("server", "run", *RUN_OVERRIDES, "--sites", "market", *public, check=False)
    assert refused.returncode == 1 and "serves sites only" in refused.stdout, refused.stdout
    (dep.root / "empty.toml").write_text("")
    with run_status.flwr_cli_env(run_status.Connection(dep.superlink, dep.ca)) as env:
        with pytest.raises(RuntimeError, match="403|Forbidden"):  # Flower's own CLI, no fedreid checks
            run_status.submit_run(ROOT, dep.root / "empty.toml", env)
    assert not processes.port_open(dep.public_host, dep.control_port)
    assert "fedreid proxy: refused POST /v1/control/" in dep.text("coordinator")
    dep.stop("coordinator")

    # 3. A site started before the coordinator retries, then joins.
    ilids = dep.start_site("ilids")
    dep.wait_log("ilids", r"Connection attempt failed, retrying", 90, proc=ilids)
    started = time.monotonic()
    dep.start_coordinator()
    dep.wait_log("ilids", r"Connection successful after", 120, proc=ilids)
    timings["site started first: joined after coordinator start"] = time.monotonic() - started

    # 4. Refusals that say what to do.
    rogue = dep.start_site("rogue", data="market", extra=("--activation-wait", "15"))
    assert rogue.wait(timeout=240) != 0
    assert "fedreid keys register rogue.pub" in dep.text("rogue")
    dep.procs.pop("rogue")
    plain = dep.cli("site", "join", "--site", "market", "--data", str(dep.root / "data" / "market"),
                    "--superlink", dep.superlink, "--insecure", "--no-check", check=False)
    assert plain.returncode == 2 and "speaks HTTPS" in plain.stdout, plain.stdout
    dep.start_site("market")
    dep.start_site(OUTSIDER)
    impostor = dep.start_site("cuhk01-impostor", key="cuhk01", data="cuhk01")
    dep.wait_log("cuhk01-impostor", r"SuperNode ID: \d+", 120, proc=impostor)

    # 5. A run of three sites, viper connected; cuhk01's node first claims to be another site.
    runs = dep.root / "runs"
    runner = dep.start("run", "server", "run", *RUN_OVERRIDES, "--sites", ",".join(SITES),
                       "--run-dir", str(runs), *dep.control())
    dep.wait_log("run", r"registered for site 'cuhk01' but it claims to be 'cuhk01-impostor'", 600, proc=runner)
    dep.stop("cuhk01-impostor")
    # while the impostor's node still holds the key, join retries by itself
    dep.start_site("cuhk01", extra=("--activation-wait", "300"))
    dep.wait_log("cuhk01", r"SuperNode ID: \d+", 360)
    cuhk01_id = re.search(r"SuperNode ID: (\d+)", dep.text("cuhk01")).group(1)
    dep.wait_log("cuhk01", r"Receiving: train message", 900, proc=runner)
    dep.crash("cuhk01")
    killed = time.monotonic()
    run_dir = next(runs.glob("run-*"))
    processes.wait_for(lambda: len(_train_records(run_dir)) >= 1, 600, "round 1 recorded", proc=runner)
    timings["site killed → round 1 closed with the failure"] = time.monotonic() - killed
    round1 = _train_records(run_dir)[0]
    assert sorted(round1["sites"]) == ["ilids", "market"]
    assert [f["site"] for f in round1["failures"]] == ["cuhk01"], round1["failures"]
    # `server run` prints the ServerApp's log as Flower streams it, after metrics.jsonl is written
    dep.wait_log("run", r"round 1 train: cuhk01 failed .*\(\d of 3 in, 1 failed\)", 120, proc=runner)
    assert not re.search(r"round 1 train: 3 of 3 site\(s\) replied", dep.text("run"))

    restarted = time.monotonic()
    dep.start_site("cuhk01", extra=("--activation-wait", "300"))
    dep.wait_log("cuhk01", r"SuperNode ID: \d+", 360)
    timings["killed site restarted → rejoined"] = time.monotonic() - restarted
    assert re.search(r"SuperNode ID: (\d+)", dep.text("cuhk01")).group(1) == cuhk01_id  # same identity

    dep.wait_log("market", r"Receiving: train message", 900, count=2, proc=runner)
    dep.crash("coordinator")
    crashed = time.monotonic()
    assert runner.wait(timeout=300) != 0
    assert "--resume" in dep.text("run")
    assert [r["round"] for r in _train_records(run_dir)] == [1]  # round 2 never committed
    dep.start_coordinator()
    timings["coordinator crash → coordinator back"] = time.monotonic() - crashed
    resumed = dep.start("resume", "server", "run", "--resume", str(run_dir), "--run-dir", str(runs), *dep.control())
    processes.wait_for(lambda: len(_train_records(run_dir)) >= 2, 900, "round 2 recorded", proc=resumed)
    timings["coordinator crash → round 2 committed by the resumed run"] = time.monotonic() - crashed
    assert resumed.wait(timeout=900) == 0, dep.text("resume")
    timings["coordinator crash → resumed run completed"] = time.monotonic() - crashed

    records = load_records(run_dir)
    assert [r["round"] for r in records if r["kind"] == "train"] == [1, 2]  # each committed once
    assert [r["round"] for r in records if r["kind"] == "evaluate"] == [0, 2]
    for record in records:
        if record["kind"] in ("train", "evaluate"):
            assert OUTSIDER not in record["sites"]
    round2 = _train_records(run_dir)[1]
    assert sorted(round2["sites"]) == sorted(SITES) and not round2["failures"]
    assert round1["sites"]["market"]["prune_ratio"] == pytest.approx(0.3, abs=0.02)
    assert round2["sites"]["market"]["prune_ratio"] == pytest.approx(0.5, abs=0.02)
    assert "Receiving" not in dep.text(OUTSIDER)  # left alone: not even asked
    coordinator_log = dep.text("run") + dep.text("resume")
    assert coordinator_log.count(f"site {OUTSIDER} (node") <= 2  # said once per run
    assert "Traceback" not in coordinator_log
    assert re.search(r"INFO \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+: +round 1 committed", coordinator_log)
    for name in ("summary.md", "map_per_round.png", "config.yaml"):
        assert (run_dir / name).exists(), name
    assert (dep.root / "state" / "market" / run_dir.name / "market.pt").exists()

    # 6. A run that cannot start says why, without a traceback; `server log` has everything.
    failing = dep.cli("server", "run", *RUN_OVERRIDES, "fl.node_wait=5", "--sites", "nosuchsite",
                      "--run-dir", str(runs), *dep.control(), check=False)
    assert failing.returncode == 1
    assert re.search(r"error: run \d+ failed: no site of this run \(nosuchsite\)", failing.stdout), failing.stdout
    assert "raise fl.node_wait" in failing.stdout and "Traceback" not in failing.stdout
    run_id = re.search(r"fedreid server log (\d+)", failing.stdout).group(1)
    assert "Traceback" in dep.cli("server", "log", run_id, *dep.control()).stdout
    print("\nrecovery timings (s):\n" + json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))


# Two hostile sites, two faults each (one per round): all four faults in two rounds.
HOSTILE_FAULTS = {"cuhk01": ["nonfinite", "shape"], "ilids": ["norm", "sparsity"]}
HONEST = "market"
# What the coordinator must say when it drops each fault (server/strategy.py, fedreid/fl/codec.py).
FAULT_REASONS = {
    "nonfinite": r"NaN or infinity",
    "shape": r"shape .* != expected",
    "norm": r"update norm .* exceeds (agg\.)?max_update_norm",
    "sparsity": r"declared sparsity",
}
HOSTILE_ROUNDS = 2


@pytest.mark.timeout(900)
def test_hostile_site_is_rejected_every_round(deployment):
    """Two sites of three send a malformed or hostile update each round (fault injection):
    non-finite values, a wrong shape, an inflated norm, a false pruning ratio — each fault
    once. Every one is rejected with its reason in the round's metrics and the coordinator's
    log; the honest site is aggregated and the run completes."""
    dep = deployment
    _setup(dep, SITES)
    dep.start_coordinator()
    dep.cli("keys", "register", *(str(dep.root / "keys" / f"{s}.pub") for s in SITES), *dep.control())
    for site in SITES:
        env = {"FEDREID_INJECT_FAULTS": ",".join(HOSTILE_FAULTS[site])} if site in HOSTILE_FAULTS else None
        dep.start_site(site, env=env)
    for site in SITES:
        dep.wait_log(site, r"SuperNode ID: \d+", 120, proc=dep.procs[site])
    runs = dep.root / "runs"
    overrides = [o for o in RUN_OVERRIDES if not o.startswith(("fl.rounds", "eval.every", "train.max_batches",
                                                               "fl.round_timeout"))]
    started = time.monotonic()
    runner = dep.start("run", "server", "run", *overrides, f"fl.rounds={HOSTILE_ROUNDS}",
                       f"eval.every={HOSTILE_ROUNDS}", "train.max_batches=1", "fl.round_timeout=240",
                       "agg.max_update_norm=1000", "--sites", ",".join(SITES), "--run-dir", str(runs),
                       *dep.control())
    assert runner.wait(timeout=720) == 0, dep.text("run")
    print(f"\nhostile run: {time.monotonic() - started:.0f} s")

    records = _train_records(next(runs.glob("run-*")))
    assert [r["round"] for r in records] == list(range(1, HOSTILE_ROUNDS + 1))
    for index, record in enumerate(records):
        for site, faults in HOSTILE_FAULTS.items():
            fault = faults[index]
            rejected = [f for f in record["failures"] if f["site"] == site]
            assert len(rejected) == 1 and re.search(FAULT_REASONS[fault], rejected[0]["reason"]), (fault, record)
            assert site not in record["sites"]
        # The honest site is aggregated, unless Flower's transport lost its reply (a transport
        # error, never a validation one): under heavy load a SuperNode can answer an in-flight
        # message with "ClientApp stopped responding" when the previous ClientApp's token expires.
        others = [f for f in record["failures"] if f["site"] not in HOSTILE_FAULTS]
        assert all(f["site"] == HONEST and f["reason"].startswith("error ") for f in others), (index, others)
        assert sorted([*record["sites"], *(f["site"] for f in others)]) == [HONEST], (index, record)
        assert all(np.isfinite(s["weight"]) for s in record["sites"].values())
    assert any(record["sites"] for record in records), records  # the honest site was aggregated
    run_log = dep.text("run")
    for site in HOSTILE_FAULTS:
        assert len(re.findall(rf"rejected reply from site {site}", run_log)) >= HOSTILE_ROUNDS
        assert len(re.findall(r"fault injection", dep.text(site))) == HOSTILE_ROUNDS

