"""The coordinator's Flower ServerApp: builds the initial model and runs the strategy.

``app`` (``flwr run .``, SuperLink deployments) reads the config from Flower's run config;
the simulation harness builds its own with ``make_server_app``.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.common.logger import log, update_console_handler
from flwr.serverapp import Grid, ServerApp

from fedreid.config import FedReIDConfig, from_flat, write_run_config
from fedreid.deploy.processes import exit_when_orphaned
from fedreid.report import RunRecorder, plot_curves, run_curves, write_summary
from fedreid.training import initial_shared_state
from server.checkpoint import (
    checkpoint_path,
    drop_uncommitted_records,
    load_checkpoint,
    save_checkpoint,
)
from server.delivery import ProgressFn
from server.memory import keep_freed_memory
from server.strategy import FedReIDStrategy

ORPHAN_GRACE_S = 10.0  # a ServerApp whose SuperLink died exits this long after


def initial_state(cfg: FedReIDConfig) -> dict[str, np.ndarray]:
    """The round-0 global model: the shared part of the run's method's model (``method.name``);
    sites running other methods must share arrays of the same shapes (admission checks)."""
    return initial_shared_state(cfg, cfg.method.name)


def run_server(grid: Grid, cfg: FedReIDConfig, run_dir: Path, *, resume: bool = False,
               progress: ProgressFn | None = None, on_round_end: Callable | None = None,
               node_wait_s: float | None = None) -> FedReIDStrategy:
    """Run (or resume) the federation; results land in ``run_dir``. ``node_wait_s`` overrides
    ``fl.node_wait`` (in-process federations, where nothing needs to connect)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    start_round = 1
    init = initial_state(cfg)
    rng_state = None
    if resume:
        state, rng_state, _ = load_checkpoint(run_dir)
        init = state.global_state
        start_round = state.last_round + 1
        # Sites are admitted again in this Flower run: node ids and sites may have changed.
        state.node_site.clear()
    else:
        write_run_config(run_dir, cfg)
    dropped = drop_uncommitted_records(run_dir, start_round - 1)
    if dropped:
        log(WARNING, "dropped %d record(s) of round(s) after round %d: never checkpointed, they are "
            "redone", dropped, start_round - 1)
    recorder = RunRecorder(run_dir, cfg.fl.strategy)

    def after_round(rnd: int, state) -> None:
        save_checkpoint(run_dir, state, strategy.rng)
        log(INFO, "round %d committed (checkpoint saved)", rnd)
        if on_round_end:
            on_round_end(rnd, state)

    strategy = FedReIDStrategy(cfg, init, num_sites=len(cfg.data.sites), recorder=recorder,
                               on_round_end=after_round, progress=progress, node_wait_s=node_wait_s)
    if resume:
        strategy.state = state
        strategy.rng.bit_generator.state = rng_state
    if start_round <= cfg.fl.rounds:
        strategy.start(grid, num_rounds=cfg.fl.rounds, timeout=cfg.fl.round_timeout,
                       start_round=start_round)
    write_summary(run_dir, f"{cfg.fl.strategy} — {len(cfg.data.sites)} sites, {cfg.fl.rounds} rounds")
    return strategy


def run_deployed(grid: Grid, cfg: FedReIDConfig, run_id: int) -> Path:
    """A SuperLink run: timestamped log lines, the run folder from the config, results as a
    simulation writes them (summary and plots), a failure's reason logged first, and no
    ServerApp left behind when the coordinator dies."""
    update_console_handler(timestamps=True, colored=False)
    exit_when_orphaned(grace_s=ORPHAN_GRACE_S, say=lambda m: log(WARNING, "ServerApp: %s", m))
    folder, resuming = Path(cfg.run_dir).resolve() / (cfg.fl.run_name or f"flwr-{run_id}"), False
    if cfg.fl.resume_dir:
        # `fedreid server run --resume DIR`: a new Flower run continues the old folder.
        folder = Path(cfg.fl.resume_dir)
        resuming = checkpoint_path(folder).exists()
    log(INFO, "run %s: sites %s, %d round(s), results in %s%s", cfg.fl.run_name or run_id,
        ", ".join(cfg.data.sites), cfg.fl.rounds, folder, " (resuming)" if resuming else "")
    try:
        run_server(grid, cfg, folder, resume=resuming)
    except Exception as exc:
        log(ERROR, "run failed: %s", exc)  # before Flower's traceback, which the CLI hides
        raise
    curves = run_curves(folder)
    if curves["rounds"]:
        plot_curves({cfg.fl.strategy: curves}, folder)
    return folder


def make_server_app(cfg: FedReIDConfig | None = None, run_dir: Path | None = None, *,
                    resume: bool = False, progress: ProgressFn | None = None) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        if cfg is None:
            run_deployed(grid, from_flat(dict(context.run_config)), int(context.run_id))
        else:
            run_server(grid, cfg, run_dir or Path(cfg.run_dir), resume=resume, progress=progress)

    return server


app = make_server_app()
