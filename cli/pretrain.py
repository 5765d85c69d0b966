"""`fedreid pretrain`: a federation's starting model trained on generated identities only.

No real person is in the data (DPPP's privacy-safe start): the generated site is trained
alone, as `fedreid train` does, and its model is written as a ``model.init`` file for
`fedreid sim model.init=FILE` (or a deployment's coordinator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, fail
from fedreid.config import ConfigError
from fedreid.config.presets import StrategyRun
from fedreid.data.records import DataError

PRETRAIN_METHODS = ("dppp", "bot")


def pretrain(
    generated: Annotated[Path, typer.Option(help="Site folder written by `fedreid data generate` (pytorch/ and meta.json inside).")],
    out: Annotated[Path, typer.Option(help="File to write: the starting global model (model.init).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides, key=value (train.epochs=20, model.arch=...).")] = None,
    method: Annotated[str, typer.Option(help="Training method: dppp (prompt-driven disentanglement) or bot.")] = "dppp",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file merged over the defaults.")] = None,
) -> None:
    """Train an initial global model on generated identities only; start a federation from it."""
    import torch

    from fedreid.config import load_config
    from fedreid.models.init_file import save_init_file
    from fedreid.single_site import train_single_site

    if method not in PRETRAIN_METHODS:
        fail(f"--method {method!r}: choose one of {', '.join(PRETRAIN_METHODS)}")
    site = generated.expanduser().resolve()
    if not (site / "pytorch").is_dir():
        fail(f"--generated {generated}: no pytorch/ folder inside; write one with "
             f"`fedreid data generate --random 200 --out {generated}`")
    try:
        cfg = load_config([*(overrides or []), f"method.name={method}", f"data.root={site.parent}",
                           "data.dataset=fedreid", f"data.sites=[{site.name}]"], config)
        result = train_single_site(cfg, site.name, console=console)
        ckpt = torch.load(Path(result["run_dir"]) / "checkpoint.pt", map_location="cpu", weights_only=True)
        path = save_init_file(out.expanduser().resolve(), ckpt["model"], method=method, arch=ckpt["arch"],
                              image_size=(cfg.data.height, cfg.data.width), vit_depth=cfg.model.vit_depth,
                              source=f"fedreid pretrain --generated {site} --method {method}")
    except (ConfigError, DataError, ValueError) as exc:
        fail(str(exc), code=1)
    after = result["after"]
    console.print(f"wrote {path}: {method} ({ckpt['arch']}) on {site.name}, mAP {after['mAP']:.3f} "
                  f"Rank-1 {after['rank1']:.3f} on its generated query/gallery")
    console.print(f"start a federation from it: fedreid sim model.init={path} model.arch={ckpt['arch']} "
                  f"model.vit_depth={cfg.model.vit_depth} data.height={cfg.data.height} data.width={cfg.data.width}",
                  highlight=False)


def check_model_init(overrides: list[str], runs: list[StrategyRun], config: Path | None) -> None:
    """Before a simulation starts: a ``model.init`` file must exist and fit the model each
    strategy's run builds (its method, arch and size); raises the loader's error otherwise."""
    from fedreid.config import load_config
    from fedreid.config.presets import strategy_values
    from fedreid.training import initial_shared_state

    for run in runs:
        cfg = load_config([*overrides, *run.overrides], config, values=strategy_values(run.strategy))
        if cfg.model.init:
            initial_shared_state(cfg, cfg.method.name)
