"""`fedreid train`: one site trained alone — the centralised reference for federated runs."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedreid.config import FedReIDConfig, write_run_config
from fedreid.data.sources import ensure_data_root
from fedreid.data.split_images import load_split_images
from fedreid.runlog import JsonlWriter, make_run_dir, markdown_table
from fedreid.training import LocalTrainer, stream_seed


def train_single_site(cfg: FedReIDConfig, site: str, console: Console | None = None,
                      run_dir: Path | None = None) -> dict:
    """Train ``cfg.train.epochs`` epochs on one site, evaluating every ``cfg.eval.every``."""
    console = console or Console()
    size = (cfg.data.height, cfg.data.width)
    root = ensure_data_root(cfg.data.root, sites=[site], synth_scale=cfg.data.synth_scale,
                            synth_seed=cfg.data.synth_seed)
    images = load_split_images(root / site, cfg.data.dataset, size, seed=cfg.seed)
    trainer = LocalTrainer(cfg, images)
    method = trainer.method.name
    run_dir = run_dir or make_run_dir(cfg.run_dir, f"train-{site}-{method}")
    write_run_config(run_dir, cfg)
    log = JsonlWriter(run_dir / "metrics.jsonl")
    arch = trainer.method.arch(cfg.model)
    console.print(f"[bold]fedreid train[/] site={site} method={method} "
                  f"model={arch} device={trainer.device} → {run_dir}")

    before = trainer.evaluate()
    log.write({"epoch": 0, **before})
    history = [{"epoch": 0, **before}]
    optimizer = trainer.optimizer()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("epoch", total=None)
        for epoch in range(cfg.train.epochs):
            progress.update(task, description=f"epoch {epoch + 1}/{cfg.train.epochs}", completed=0)
            stats = trainer.train_epochs(
                1, seed=stream_seed(cfg.seed, site, epoch), epoch_offset=epoch, optimizer=optimizer,
                progress=lambda i, n: progress.update(task, completed=i, total=n),
            )
            record = {"epoch": epoch + 1, **stats}
            if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.train.epochs:
                record.update(trainer.evaluate())
                console.print(f"epoch {epoch + 1}: mAP {record['mAP']:.3f} "
                              f"Rank-1 {record['rank1']:.3f} loss {record.get('loss', float('nan')):.3f}")
            log.write(record)
            history.append(record)

    final = history[-1]
    torch.save({"model": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
                "method": method, "arch": arch}, run_dir / "checkpoint.pt")
    rows = [["untrained", before["mAP"], before["rank1"], before["mINP"]],
            [f"after {cfg.train.epochs} epochs", final["mAP"], final["rank1"], final["mINP"]]]
    headers = ["model", "mAP", "Rank-1", "mINP"]
    if "rerank_mAP" in final:
        rows.append([f"after, re-ranked ({cfg.eval.rerank})", final["rerank_mAP"],
                     final["rerank_rank1"], final["rerank_mINP"]])
    (run_dir / "summary.md").write_text(
        f"# {site} — {method} ({arch})\n\n" + markdown_table(headers, rows)
    )
    return {"run_dir": str(run_dir), "before": before, "after": final}
