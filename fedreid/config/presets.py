"""Strategies are config presets over one code path: what each baseline switches off.

Applied under the user's config file and overrides, so ``--strategy fedcapr
prune.enabled=true`` or a YAML file with ``method: {name: bot}`` still wins.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGY_PRESETS: dict[str, list[str]] = {
    # FedKLPR (the paper): unsupervised CAP sites, KL regulariser, pruning + CRR, KLPWA, SAS.
    "fedklpr": [
        "method.name=capr", "reg.enabled=true", "reg.kind=kl", "prune.enabled=true",
        "crr.enabled=true", "agg.weighting=klpwa", "agg.sas=true", "agg.share_buffers=true",
    ],
    # FedCAPR: the dense baseline FedKLPR builds on — cosine regulariser (0.13), CDW weights.
    "fedcapr": [
        "method.name=capr", "reg.enabled=true", "reg.kind=cosine", "reg.weight=0.13",
        "prune.enabled=false", "crr.enabled=false", "agg.weighting=cdw", "agg.sas=false",
        "agg.share_buffers=true",
    ],
    # FedPav: supervised sites, backbone shared, heads and BN statistics private.
    "fedpav": [
        "method.name=bot", "reg.enabled=false", "prune.enabled=false", "crr.enabled=false",
        "agg.weighting=samples", "agg.sas=false", "agg.share_buffers=false",
    ],
    # FedAvg: supervised sites, the whole shared model (parameters and buffers) averaged.
    "fedavg": [
        "method.name=bot", "reg.enabled=false", "prune.enabled=false", "crr.enabled=false",
        "agg.weighting=samples", "agg.sas=false", "agg.share_buffers=true",
    ],
}


def strategy_overrides(strategy: str) -> list[str]:
    if strategy not in STRATEGY_PRESETS:
        raise ValueError(
            f"strategy {strategy!r} is unknown; choose one of {', '.join(STRATEGY_PRESETS)}"
        )
    return [f"fl.strategy={strategy}", *STRATEGY_PRESETS[strategy]]


def strategy_values(strategy: str) -> dict:
    """The preset as a nested dict, for ``load_config(values=...)`` (below files/overrides)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.from_dotlist(strategy_overrides(strategy)))


@dataclass(frozen=True)
class StrategyRun:
    """One entry of ``fedreid sim --compare``: a preset and the overrides only it gets."""

    label: str  # its run folder and its name in comparison.md
    strategy: str
    overrides: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.strategy + (f" ({', '.join(self.overrides)})" if self.overrides else "")


def parse_strategy_runs(text: str) -> list[StrategyRun]:
    """``STRATEGY[:key=value...]`` entries, comma-separated (``fedklpr:codec.value_dtype=float16,
    fedavg``); the same preset twice gets folders ``fedklpr``, ``fedklpr-2``."""
    runs: list[StrategyRun] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        strategy, *own = entry.split(":")
        strategy_overrides(strategy)  # fails naming the presets
        bad = [o for o in own if "=" not in o]
        if bad:
            raise ValueError(f"strategy {entry!r}: {bad} are not key=value overrides; write "
                             f"STRATEGY:key=value:key=value, e.g. fedklpr:codec.value_dtype=float16")
        taken = sum(r.strategy == strategy for r in runs)
        runs.append(StrategyRun(strategy if not taken else f"{strategy}-{taken + 1}", strategy, tuple(own)))
    if not runs:
        raise ValueError("no strategy given; e.g. --compare fedklpr,fedavg")
    return runs
