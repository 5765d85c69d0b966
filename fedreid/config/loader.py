"""Load the typed config from defaults, an optional YAML file and dotted overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from fedreid.config.schema import FedReIDConfig, SiteOverride
from fedreid.methods import METHODS


def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values of the string options, read from the registries that define them."""
    from fedreid.config.presets import STRATEGY_PRESETS
    from fedreid.eval.protocols import RERANKERS
    from fedreid.eval.rerank import KWF_WEIGHTINGS
    from fedreid.fl.codec import DOWNLOADS, UPLOADS, VALUE_DTYPES
    from fedreid.fl.crr import HALT_MODES, RESTORE_MODES
    from fedreid.fl.weights import COMBINES, KLAW_SIGNS, PRAW_FORMS, WEIGHTINGS
    from fedreid.losses.kl import DIRECTIONS
    from fedreid.models import BACKBONES
    from fedreid.optim import OPTIMIZERS
    from fedreid.prune import SCOPES
    from fedreid.regularisers import REGULARISERS

    return {
        "model.arch": ("auto", *BACKBONES),
        "method.name": tuple(METHODS),
        "train.optimizer": tuple(OPTIMIZERS),
        "reg.kind": tuple(REGULARISERS),
        "reg.direction": DIRECTIONS,
        "prune.scope": SCOPES,
        "agg.weighting": WEIGHTINGS,
        "agg.klaw_sign": KLAW_SIGNS,
        "agg.praw_form": PRAW_FORMS,
        "agg.combine": COMBINES,
        "crr.halt": HALT_MODES,
        "crr.labels": ("method", "identity"),
        "crr.restore": RESTORE_MODES,
        "codec.value_dtype": VALUE_DTYPES,
        "codec.upload": UPLOADS,
        "codec.download": DOWNLOADS,
        "fl.strategy": tuple(STRATEGY_PRESETS),
        "eval.rerank": RERANKERS,
        "eval.kwf_weighting": KWF_WEIGHTINGS,
    }


UNIT_INTERVAL = ("prune.step", "prune.target", "agg.beta", "fl.fraction_train")


def section_keys(full_key: str) -> str:
    """The keys the section holding ``full_key`` allows, read from the schema dataclasses."""
    node: Any = FedReIDConfig()
    parts = full_key.split(".")[:-1]
    for part in parts:
        if isinstance(node, dict):  # sites.<name>: every site's override has one schema
            node = SiteOverride()
            continue
        node = getattr(node, part, None) if dataclasses.is_dataclass(node) else None
        if node is None:
            return "the section is not in the schema"
    if not dataclasses.is_dataclass(node):
        return f"{'.'.join(parts)} holds free-form keys"
    where = ".".join(parts) or "the top level"
    return f"{where} allows {', '.join(f.name for f in dataclasses.fields(node))}"


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
        if isinstance(exc, ConfigKeyError):
            reason += f"; {section_keys(key)}"
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
    for key, allowed in choices().items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key}={flat[key]!r} is not one of {', '.join(allowed)}")
    for name, cls in METHODS.items():
        if getattr(cfg.method, name, None) is None:
            continue  # registered after the schema was built: its defaults apply
        share = cfg.method_options(name).share
        if share not in cls.share_choices():
            raise ConfigError(f"method.{name}.share={share!r} is not one of {', '.join(cls.share_choices())}")
    from fedreid.eval.protocols import PROTOCOLS

    unknown = [p for p in cfg.eval.protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"eval.protocols {unknown}: choose among {', '.join(PROTOCOLS)}")
    for site, override in cfg.sites.items():
        if site not in cfg.data.sites:
            raise ConfigError(f"sites.{site}: {site!r} is not in data.sites {cfg.data.sites}; "
                              "add it there or drop the override")
        if override.method and override.method not in METHODS:
            raise ConfigError(f"sites.{site}.method={override.method!r} is not one of {', '.join(METHODS)}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= float(flat[key]) <= 1.0:
            raise ConfigError(f"{key}={flat[key]} must lie in [0, 1]")
    for key in ("train.batch_size", "train.num_instances", "fl.rounds", "train.epochs",
                "eval.kwf_top_m", "eval.kwf_k"):
        if int(flat[key]) < 1:
            raise ConfigError(f"{key}={flat[key]} must be at least 1")
    dp = cfg.dp
    if dp.clipping_norm <= 0 or dp.noise_multiplier < 0 or not 0 < dp.delta < 1:
        raise ConfigError(
            f"dp.clipping_norm={dp.clipping_norm} must be > 0, dp.noise_multiplier="
            f"{dp.noise_multiplier} >= 0 and dp.delta={dp.delta} in (0, 1)"
        )
    if dp.enabled and cfg.codec.upload == "difference-int8":
        raise ConfigError(
            "codec.upload=difference-int8 with dp.enabled=true: the int8 rounding a site carries "
            "to its next upload would bypass the clipping bound that DP's noise is sized for; use "
            "codec.upload=difference (or absolute) with DP"
        )
    if cfg.model.parts < 0 or cfg.model.vit_depth < 0:
        raise ConfigError(f"model.parts={cfg.model.parts} and model.vit_depth={cfg.model.vit_depth} must be >= 0")
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
    site_fields = {f.name for f in dataclasses.fields(SiteOverride)}
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        per_site = len(parts) == 3 and parts[0] == "sites" and parts[2] in site_fields
        if key not in known and not per_site:
            continue  # Flower adds its own keys; only ours are mapped
        if key in known and isinstance(known[key], list):
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


def toml_value(value: Any) -> str:
    """One run-config value as TOML (lists comma-separated: Flower's run config has none)."""
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_config_toml(cfg: FedReIDConfig, header: str | None = None,
                    extra: Mapping[str, Any] | None = None) -> str:
    """The whole config as Flower run-config lines ``"key" = value`` (what `flwr run
    --run-config FILE` and pyproject's ``[tool.flwr.app.config]`` hold); :func:`from_flat`
    reads them back. ``extra`` overrides dotted keys."""
    items = dict(flat_items(cfg))
    items.update(extra or {})
    lines = [header] if header else []
    lines += [f'"{key}" = {toml_value(value)}' for key, value in items.items()]
    return "\n".join(lines) + "\n"


def flower_run_config_toml() -> str:
    """The ``[tool.flwr.app.config]`` table for pyproject.toml, generated from the schema.

    A test keeps pyproject.toml equal to this output.
    """
    return run_config_toml(FedReIDConfig(), header="[tool.flwr.app.config]")
