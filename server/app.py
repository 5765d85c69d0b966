"""The coordinator's Flower ServerApp: builds the initial model and runs the strategy.

``app`` (``flwr run .``, SuperLink deployments) reads the config from Flower's run config;
the simulation harness builds its own with ``make_server_app``.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedreid.config import FedReIDConfig, from_flat, write_run_config
from fedreid.report import RunRecorder, write_summary
from fedreid.training import initial_shared_state
from server.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from server.strategy import FedReIDStrategy, ProgressFn


def initial_state(cfg: FedReIDConfig) -> dict[str, np.ndarray]:
    """The round-0 global model: the shared part of the run's method's model (``method.name``);
    sites running other methods must share arrays of the same shapes (admission checks)."""
    return initial_shared_state(cfg, cfg.method.name)


def run_server(grid: Grid, cfg: FedReIDConfig, run_dir: Path, *, resume: bool = False,
               progress: ProgressFn | None = None, on_round_end: Callable | None = None,
               node_wait_s: float = 120.0) -> FedReIDStrategy:
    """Run (or resume) the federation; results land in ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = RunRecorder(run_dir, cfg.fl.strategy)
    start_round = 1
    init = initial_state(cfg)
    rng_state = None
    if resume:
        state, rng_state, _ = load_checkpoint(run_dir)
        init = state.global_state
        start_round = state.last_round + 1
    else:
        write_run_config(run_dir, cfg)

    def after_round(rnd: int, state) -> None:
        save_checkpoint(run_dir, state, strategy.rng)
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


def log_progress(phase: str, done: int, total: int, site: str) -> None:
    """Deployed runs: one log line per reply, which `flwr log` / `fedreid server run` show."""
    log(INFO, "%s: %d/%d site(s) replied%s", phase, done, total, f" (last: {site})" if site else "")


def make_server_app(cfg: FedReIDConfig | None = None, run_dir: Path | None = None, *,
                    resume: bool = False, progress: ProgressFn | None = None) -> ServerApp:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        conf = cfg if cfg is not None else from_flat(dict(context.run_config))
        folder, resuming = run_dir, resume
        if folder is None and conf.fl.resume_dir:
            # `fedreid server run --resume DIR`: a new Flower run continues the old folder.
            folder = Path(conf.fl.resume_dir)
            resuming = checkpoint_path(folder).exists()
        folder = folder or Path(conf.run_dir).resolve() / f"flwr-{context.run_id}"
        run_server(grid, conf, folder, resume=resuming, progress=progress or log_progress)

    return server


app = make_server_app()
