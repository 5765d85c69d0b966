"""`fedreid analyse`: studies of trained models.

    attributes RUN_DIR [KEY=VALUE ...]             each site's mosaic model of a federated run
    attributes --checkpoint FILE --site S [K=V]    one model (e.g. `fedreid train`'s checkpoint.pt)

Writes, per site and for the federation (the sites' queries pooled), a Markdown table and a
PNG bar chart of attribute importance, and every figure in ``importance.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import console, fail
from fedreid.data.records import DataError

analyse_app = typer.Typer(help="Studies of trained models: attribute importance.", no_args_is_help=True)


def _split(args: list[str]) -> tuple[Path | None, list[str]]:
    overrides = [a for a in args if "=" in a]
    folders = [a for a in args if "=" not in a]
    if len(folders) > 1:
        fail(f"one run folder at most, got {folders}; overrides are key=value")
    return (Path(folders[0]) if folders else None), overrides


@analyse_app.command("attributes")
def attributes(
    args: Annotated[list[str] | None, typer.Argument(
        help="RUN_DIR (a federated run folder: config.yaml, checkpoints/, site-state/) and config overrides key=value.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Examine this checkpoint instead (a dict with 'model'; config.yaml beside it).")] = None,
    site: Annotated[list[str] | None, typer.Option(
        "--site", help="Site to examine (repeat for several); default: every site of the run.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <run or checkpoint folder>/attributes).")] = None,
    flip: Annotated[bool, typer.Option(help="Flip test-time augmentation, as the run's evaluation.")] = True,
    trees: Annotated[int, typer.Option(help="Trees of the random forest.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the forest and its held-out queries.")] = 0,
) -> None:
    """Which attributes the model relies on: knock each attribute expert out in turn and measure
    what it costs (per-query AP and Rank-1; GLMs, random-forest permutation importance, SHAP
    when installed; Holm-corrected paired tests), per site and for the federation."""
    from fedreid.analysis import Knockout, attribute_importance, generator_truth
    from fedreid.analysis.models import checkpoint_site_models, federated_site_models, site_knockout
    from fedreid.analysis.report import (
        importance_chart,
        importance_markdown,
        site_agreement_markdown,
    )

    run_dir, overrides = _split(list(args or []))
    if (run_dir is None) == (checkpoint is None):
        fail("give a run folder (RUN_DIR) or --checkpoint FILE, not both and not neither")
    sites = list(site or [])
    try:
        with console.status("loading the sites' models and data"):
            models = (federated_site_models(run_dir, sites, overrides) if run_dir is not None
                      else checkpoint_site_models(checkpoint, sites, overrides))
        folder = out or (run_dir or checkpoint.parent) / "attributes"
        folder.mkdir(parents=True, exist_ok=True)
        knockouts, by_site, report = [], {}, {"sites": {}}
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True)
        with progress:
            for model in models:
                task = progress.add_task(f"{model.site}: knock-outs", total=len(model.method.names) + 1)
                ko = site_knockout(model, flip=flip,
                                   progress=lambda done, _total, task=task: progress.update(task, completed=done))
                progress.update(task, description=f"{model.site}: importance")
                imp = attribute_importance(ko, seed=seed, trees=trees)
                truth = generator_truth(model.data_dir)
                text = importance_markdown(imp, f"Attribute importance — {model.site}",
                                           truth.separability if truth else None,
                                           truth.present if truth else None)
                (folder / f"{model.site}.md").write_text(text)
                importance_chart(imp, folder / f"{model.site}.png", f"{model.site}: knock-out loss per attribute")
                knockouts.append(ko)
                by_site[model.site] = imp
                report["sites"][model.site] = {**imp.to_dict(), "truth": truth.separability if truth else None}
        pooled = attribute_importance(Knockout.concat(knockouts), seed=seed, trees=trees)
        fed_text = importance_markdown(pooled, f"Attribute importance — federation ({', '.join(by_site)})")
        if len(by_site) > 1:
            fed_text += "\n" + site_agreement_markdown(by_site)
        (folder / "federation.md").write_text(fed_text)
        importance_chart(pooled, folder / "federation.png", "federation: knock-out loss per attribute")
        report["federation"] = pooled.to_dict()
        (folder / "importance.json").write_text(json.dumps(report, indent=1))
    except (DataError, ValueError) as exc:
        fail(str(exc), code=1)
    _print_summary(by_site, pooled)
    console.print(f"tables and charts: {folder}", highlight=False)


def _print_summary(by_site: dict, pooled) -> None:
    table = Table(title="attributes whose expert costs most when knocked out (ΔAP)")
    table.add_column("site")
    table.add_column("queries", justify="right")
    table.add_column("top attributes")
    for name, imp in [*by_site.items(), ("federation", pooled)]:
        order = sorted(range(len(imp.names)), key=lambda i: -imp.delta_ap[i])[:4]
        table.add_row(name, str(imp.num_queries),
                      ", ".join(f"{imp.names[i]} {imp.delta_ap[i]:+.3f}" for i in order))
    console.print(table)
