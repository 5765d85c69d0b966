"""Load the typed config from defaults, an optional YAML file and dotted overrides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedreid.config.schema import FedReIDConfig

# Allowed values of the string options; checked once after loading.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": ("resnet18", "resnet34", "resnet50", "mobilenet_v2"),
    "train.optimizer": ("adam", "sgd"),
    "kl.direction": ("ref_to_local", "local_to_ref", "symmetric"),
    "kl.loss": ("kl", "cosine"),
    "prune.scope": ("global", "layer"),
    "agg.weighting": ("klpwa", "samples", "uniform", "cdw"),
    "agg.klaw_sign": ("more_divergence_more_weight", "less_divergence_more_weight"),
    "agg.praw_form": ("ratio", "density"),
    "agg.combine": ("product", "convex"),
    "crr.halt": ("forever", "pause"),
    "crr.metric": ("auto", "map", "proxy"),
    "crr.restore": ("backup", "refill"),
    "codec.value_dtype": ("float32", "float16"),
    "fl.strategy": ("fedklpr", "fedcapr", "fedpav", "fedavg"),
}
UNIT_INTERVAL = ("prune.step", "prune.target", "agg.beta", "fl.fraction_train")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the fix."""


def load_config(
    overrides: Iterable[str] = (),
    file: str | Path | None = None,
    values: Mapping[str, Any] | None = None,
) -> FedReIDConfig:
    """Defaults ← ``values`` (nested dict) ← YAML file ← ``key=value`` overrides, type-checked."""
    cfg = OmegaConf.structured(FedReIDConfig)
    try:
        if values:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(dict(values)))
        if file is not None:
            path = Path(file)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        overrides = list(overrides)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(
                    f"override {item!r} is not key=value; write e.g. prune.target=0.6"
                )
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        reason = str(exc).splitlines()[0]
        raise ConfigError(
            f"config key {key}: {reason}. "
            "Run `fedreid config` to see every key, its type and default."
        ) from exc
    obj: FedReIDConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(obj)
    return obj


def validate(cfg: FedReIDConfig) -> None:
    """Check choices and ranges that types alone cannot express."""
    flat = dict(flat_items(cfg))
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key}={flat[key]!r} is not one of {', '.join(allowed)}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= float(flat[key]) <= 1.0:
            raise ConfigError(f"{key}={flat[key]} must lie in [0, 1]")
    for key in ("train.batch_size", "train.num_instances", "fl.rounds", "train.epochs"):
        if int(flat[key]) < 1:
            raise ConfigError(f"{key}={flat[key]} must be at least 1")
    dp = cfg.dp
    if dp.clipping_norm <= 0 or dp.noise_multiplier < 0 or not 0 < dp.delta < 1:
        raise ConfigError(
            f"dp.clipping_norm={dp.clipping_norm} must be > 0, dp.noise_multiplier="
            f"{dp.noise_multiplier} >= 0 and dp.delta={dp.delta} in (0, 1)"
        )
    if cfg.train.batch_size % cfg.train.num_instances:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of "
            f"train.num_instances={cfg.train.num_instances} (P identities × K images)"
        )


def flat_items(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``[("prune.target", 0.6), ...]`` — the dotted keys Flower's run config uses."""
    node = OmegaConf.create(cfg) if isinstance(cfg, Mapping) else OmegaConf.structured(cfg)
    container = OmegaConf.to_container(node)
    out: list[tuple[str, Any]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        else:
            out.append((path, node))

    walk(container, prefix)
    return out


def from_flat(flat: Mapping[str, Any]) -> FedReIDConfig:
    """Build a config from Flower's flat run config (lists are written comma-separated)."""
    known = dict(flat_items(FedReIDConfig()))
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in known:
            continue  # Flower adds its own keys; only ours are mapped
        if isinstance(known[key], list):
            value = [v for v in str(value).split(",") if v]
            value = [type(known[key][0])(v) for v in value] if known[key] else value
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return load_config(values=nested)


def config_to_yaml(cfg: FedReIDConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def flower_run_config_toml() -> str:
    """The ``[tool.flwr.app.config]`` table for pyproject.toml, generated from the schema.

    Flower's run config allows no lists, so list values are written comma-separated;
    :func:`from_flat` reads them back. A test keeps pyproject.toml equal to this output.
    """
    lines = ["[tool.flwr.app.config]"]
    for key, value in flat_items(FedReIDConfig()):
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace('"', '\\"') + '"'
        lines.append(f'"{key}" = {text}')
    return "\n".join(lines) + "\n"
