"""`fedreid sim`: the federation on one machine with Flower's simulation engine (Ray).

One run = one strategy into ``<run>/<strategy>/``; ``--compare`` runs several with the same
seed and writes ``comparison.md`` and plots beside them. Sites' private state is kept in
``<run>/<strategy>/site-state/`` so ``--resume`` continues a crashed run at its next round.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedreid.config import FedReIDConfig, load_config
from fedreid.config.presets import StrategyRun, strategy_values
from fedreid.data.sources import ensure_data_root
from fedreid.report import compare_runs, run_curves, write_summary
from fedreid.runlog import make_run_dir


def backend_config(cfg: FedReIDConfig, num_sites: int) -> dict[str, Any]:
    """Ray settings: CPU/GPU share per simulated site, or attach to an existing cluster.

    With ``sim.ray_address`` set ("auto" or "host:port") Ray joins that cluster instead of
    starting a local one, so a federation larger than one machine spreads over its nodes.
    """
    import torch

    client_gpus = cfg.sim.client_gpus
    if client_gpus == 0 and torch.cuda.is_available() and cfg.device != "cpu":
        client_gpus = min(1.0, torch.cuda.device_count() / num_sites)  # a share of the GPUs each
    resources = {"num_cpus": cfg.sim.client_cpus, "num_gpus": client_gpus}
    if cfg.sim.ray_address:
        init_args: dict[str, Any] = {"address": cfg.sim.ray_address}
    else:
        init_args = {"num_cpus": cfg.sim.num_cpus or os.cpu_count() or 1,
                     "num_gpus": cfg.sim.num_gpus or (torch.cuda.device_count() if client_gpus else 0)}
    return {"client_resources": resources, "init_args": init_args}


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("DEPRECATED FEATURE")
                    and "run_simulation" in " ".join(map(str, record.args or ())))


@contextmanager
def quiet_framework_notices() -> Iterator[None]:
    """Silence exactly two notices a user of `fedreid sim` cannot act on.

    Flower 1.41 marks ``run_simulation`` deprecated in favour of ``flwr run``, which starts the
    apps in separate processes and loses what the simulation needs here (the in-process
    ServerApp with its progress callback, the Ray backend options of ``sim.*``). Ray 2.x warns
    that it will stop overriding ``CUDA_VISIBLE_DEVICES`` for actors asking for no GPU; opting
    in now (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``) would let CPU-only sites see GPUs, so the
    current behaviour is kept and only the tip is dropped. Flower's INFO chatter is lowered
    to WARNING for the duration.
    """
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    drop = _DropRunSimulationDeprecation()
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            yield
    finally:
        flwr_logger.removeFilter(drop)
        flwr_logger.setLevel(level)


def describe_methods(cfg: FedReIDConfig) -> str:
    """``resnet18, capr`` or, for a mixed federation, each method with its backbone and sites."""
    from fedreid.methods import get_method

    by_method: dict[str, list[str]] = {}
    for site in cfg.data.sites:
        by_method.setdefault(cfg.method_of(site), []).append(site)
    parts = [f"{get_method(m).arch(cfg.model)}, {m}" + (f": {', '.join(s)}" if len(by_method) > 1 else "")
             for m, s in by_method.items()]
    return "; ".join(parts)


def simulate(cfg: FedReIDConfig, run_dir: Path, *, resume: bool = False,
             console: Console | None = None) -> Path:
    """Run one strategy's federation into ``run_dir``; returns the folder."""
    from flwr.simulation import run_simulation

    from clients.app import make_client_app
    from server.app import make_server_app

    console = console or Console()
    sites = cfg.data.sites
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[site]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task(cfg.fl.strategy, total=None, site="")

        def on_progress(phase: str, done: int, total: int, site: str) -> None:
            progress.update(task, description=f"{cfg.fl.strategy} {phase}", completed=done,
                            total=total, site=f"last: {site}" if site else "")

        server_app = make_server_app(cfg, run_dir, resume=resume, progress=on_progress)
        client_app = make_client_app(cfg, state_dir=run_dir / "site-state")
        with quiet_framework_notices():
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=len(sites), backend_name="ray",
                           backend_config=backend_config(cfg, len(sites)), verbose_logging=False)
    return run_dir


def run_in_process(overrides: list[str], run_dir: Path) -> FedReIDConfig:
    """One federation with the real ClientApp and strategy on an in-process grid (no Ray,
    sites trained one after another): variants run this way differ only in their config.
    ``overrides`` start with a strategy preset; the generated data is made on first use."""
    from clients.app import make_client_app
    from server.app import run_server
    from sims.inprocess_grid import InProcessGrid, set_task_identity

    set_task_identity()
    cfg = load_config(overrides)
    root = ensure_data_root(cfg.data.root, sites=cfg.data.sites, synth_scale=cfg.data.synth_scale,
                            synth_seed=cfg.data.synth_seed)
    cfg = replace(cfg, data=replace(cfg.data, root=str(root)))
    grid = InProcessGrid(make_client_app(cfg, state_dir=run_dir / "site-state"),
                         {i + 1: {"partition-id": i} for i in range(len(cfg.data.sites))})
    run_server(grid, cfg, run_dir, node_wait_s=1)
    return cfg


def _data_root(cfg: FedReIDConfig, console: Console) -> Path:
    """The data folder; synthetic-8 is generated (and its table shown) on first use."""
    fresh = not Path(cfg.data.root).exists()
    if fresh:
        console.print(f"generating synthetic-8 into {cfg.data.root} (first use)…")
    root = ensure_data_root(cfg.data.root, sites=cfg.data.sites, synth_scale=cfg.data.synth_scale,
                            synth_seed=cfg.data.synth_seed)
    if fresh:
        from fedreid.data.synth import render_spec_table

        console.print(render_spec_table(cfg.data.synth_scale, seed=cfg.data.synth_seed),
                      markup=False, highlight=False, soft_wrap=True)
    return root


def run_sim_command(overrides: list[str], *, strategies: list[StrategyRun], data: Path | None,
                    resume: Path | None, config_file: Path | None, console: Console) -> Path:
    """What `fedreid sim` does: resolve configs, generate data if needed, run, summarise."""
    extra = [f"data.root={data}"] if data else []
    if resume is not None:
        base = Path(resume)
        if not base.is_dir():
            raise FileNotFoundError(f"--resume {base}: no such run folder")
    else:
        base = None
    runs: dict[str, Path] = {}
    started = time.perf_counter()
    for run in strategies:
        cfg = load_config([*overrides, *extra, *run.overrides], config_file, values=strategy_values(run.strategy))
        root = _data_root(cfg, console)
        cfg = replace(cfg, data=replace(cfg.data, root=str(root)))
        if base is None:
            base = make_run_dir(cfg.run_dir, "sim-" + "-vs-".join(r.label for r in strategies))
        run_dir = base / run.label
        is_resume = resume is not None and (run_dir / "checkpoints" / "latest.pt").exists()
        title = f"{run.describe()} — {len(cfg.data.sites)} sites, {cfg.fl.rounds} rounds"
        console.rule(f"{title} ({describe_methods(cfg)})" + (" — resuming" if is_resume else ""))
        simulate(cfg, run_dir, resume=is_resume, console=console)
        console.print(write_summary(run_dir, title))
        runs[run.label] = run_dir
    assert base is not None
    if len(runs) > 1:
        console.print(compare_runs(runs, base, {r.label: r.describe() for r in strategies}))
    else:
        c = run_curves(next(iter(runs.values())))
        if c["rounds"]:
            from fedreid.report import plot_curves

            plot_curves({strategies[0].label: c}, base)
    console.print(f"[bold]done in {time.perf_counter() - started:.0f} s[/] → {base}")
    return base
