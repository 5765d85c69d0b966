"""The ``fedreid`` command. Every sub-command takes dotted config overrides (``prune.target=0.6``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.analyse import analyse_app
from cli.audit import audit
from cli.augment import augment as site_augment
from cli.augment import styles as site_styles
from cli.common import checked_dataset, console
from cli.common import fail as _fail
from cli.data_generate import generate as data_generate
from cli.deploy import certs, keys_app, server_app, site_app
from cli.index import index_app
from cli.pretrain import check_model_init, pretrain
from fedreid.config import ConfigError, config_to_yaml, load_config
from fedreid.data.records import DataError

app = typer.Typer(
    help="Federated person re-identification (FedKLPR on Flower).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Benchmark data: generate synthetic-8, validate real folders.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.command("generate")(data_generate)
app.add_typer(server_app, name="server")
site_app.command("audit")(audit)
site_app.command("augment")(site_augment)
site_app.command("styles")(site_styles)
site_app.add_typer(index_app, name="index")
app.add_typer(site_app, name="site")
app.add_typer(keys_app, name="keys")
app.add_typer(analyse_app, name="analyse")
app.command("certs")(certs)
app.command("pretrain")(pretrain)

Overrides = Annotated[list[str] | None, typer.Argument(help="Config overrides, key=value (see `fedreid config`).")]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file merged over the defaults.")]


def _load(overrides: list[str] | None, file: Path | None, extra: list[str] = ()):  # type: ignore[assignment]
    try:
        return load_config([*(overrides or []), *extra], file)
    except ConfigError as exc:
        _fail(str(exc))


def _parse_size(size: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        _fail(f"--size {size!r} is not HxW; write e.g. --size 128x64")
    if h < 16 or w < 8:
        _fail(f"--size {size} is too small; use at least 16x8")
    return h, w


@app.command("config")
def show_config(
    overrides: Overrides = None,
    config: ConfigFile = None,
    as_yaml: Annotated[bool, typer.Option("--yaml", help="Print the resolved config as YAML instead.")] = False,
) -> None:
    """Every config key with its type, value (overrides applied) and help; --yaml for a file."""
    from rich.markup import escape
    from rich.table import Table

    from fedreid.config.keys import describe_keys
    from fedreid.config.loader import choices

    cfg = _load(overrides, config)
    if as_yaml:
        console.print(config_to_yaml(cfg), highlight=False, markup=False)
        return
    allowed = choices()
    table = Table("key", "type", "value", "help", box=None, pad_edge=False)
    for key, type_name, value, help_text in describe_keys(cfg):
        if key in allowed:
            help_text = f"{help_text} [one of: {', '.join(allowed[key])}]".strip()
        table.add_row(key, type_name, escape(repr(value)), escape(help_text))
    console.print(table)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the eight sites into.")] = Path("data/synthetic-8"),
    scale: Annotated[float, typer.Option(help="Identity-count scale (1.0 = default benchmark).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed; same seed and arguments → identical files.")] = 0,
    size: Annotated[str, typer.Option(help="Base image size HxW.")] = "128x64",
    sites: Annotated[str | None, typer.Option(help="Comma-separated subset of sites ('' for none: kinds only).")] = None,
    kinds: Annotated[str, typer.Option(help="Optional site kinds to add: aerial, ir-video, clothes (comma-separated).")] = "",
    workers: Annotated[int, typer.Option(help="Processes used to render.")] = 2,
) -> None:
    """Generate synthetic-8: eight sites mirroring the FedKLPR benchmark splits (plus --kinds)."""
    from fedreid.data.synth import generate_synthetic8, render_spec_table

    hw = _parse_size(size)
    started = time.perf_counter()
    try:
        with console.status("rendering synthetic-8…"):
            generate_synthetic8(out, scale=scale, seed=seed, size=hw,
                                sites=None if sites is None else [s for s in sites.split(",") if s],
                                kinds=[k for k in kinds.split(",") if k], workers=workers)
    except ValueError as exc:
        _fail(str(exc))
    console.print(render_spec_table(scale, seed=seed, kinds=[k for k in kinds.split(",") if k],
                                    sites=None if sites is None else sites.split(",")),
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out} in {time.perf_counter() - started:.1f} s")


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="Data set folder.")],
    dataset: Annotated[str, typer.Option(help="Reader name, e.g. market1501, fedreid.")] = "fedreid",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the split rule for sets without public splits.")] = 0,
) -> None:
    """Validate a data folder: counts per split, image sizes, warnings; errors name the file."""
    from fedreid.data.check import render_check_report

    report = checked_dataset(path, dataset, seed)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        console.print(render_check_report(report))


@app.command("train")
def train(
    site: Annotated[str, typer.Option(help="Site folder name under --data (e.g. market).")],
    overrides: Overrides = None,
    data: Annotated[Path | None, typer.Option(help="Data root with one folder per site.")] = None,
    config: ConfigFile = None,
) -> None:
    """Train one site alone (method=NAME: bot, capr, scm, vitc, ...) and evaluate it — the centralised reference."""
    from fedreid.single_site import train_single_site

    extra = [f"data.root={data}"] if data else []
    args = list(overrides or [])
    # Accept the short form `method=bot` as the issue and README write it.
    args = [f"method.name={a.split('=', 1)[1]}" if a.startswith("method=") else a for a in args]
    cfg = _load(args, config, extra)
    try:
        result = train_single_site(cfg, site, console=console)
    except (DataError, ValueError) as exc:
        _fail(str(exc), code=1)
    console.print(f"summary: {result['run_dir']}/summary.md")


@app.command("sim")
def sim(
    overrides: Overrides = None,
    strategy: Annotated[str, typer.Option(help="fedklpr | fedcapr | fedpav | fedavg")] = "fedklpr",
    compare: Annotated[str | None, typer.Option(help="Comma-separated strategies run with the same seed, e.g. fedklpr,fedcapr; STRATEGY:key=value gives one of them its own overrides (fedklpr:codec.value_dtype=float16,fedavg).")] = None,
    data: Annotated[Path | None, typer.Option(help="Data root, one FedReID-layout folder per site (default: synthetic-8, generated on first use).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Run folder of an interrupted run to continue.")] = None,
    config: ConfigFile = None,
) -> None:
    """Simulate the federation over the benchmark sites with Flower's simulation engine."""
    from fedreid.config.presets import parse_strategy_runs
    from sims.runner import run_sim_command

    try:
        runs = parse_strategy_runs(compare or strategy)
    except ValueError as exc:
        _fail(f"--compare/--strategy: {exc}", code=2)
    for run in runs:  # fail fast on a bad override, before Ray starts
        _load([*(overrides or []), *run.overrides], config)
    try:
        check_model_init(list(overrides or []), runs, config)
        run_sim_command(list(overrides or []), strategies=runs, data=data, resume=resume,
                        config_file=config, console=console)
    except (DataError, ConfigError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc), code=1)


if __name__ == "__main__":
    app()
