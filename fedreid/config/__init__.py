"""Typed configuration: defaults in :mod:`fedreid.config.schema`, loading in ``loader``."""

from fedreid.config.loader import (
    ConfigError,
    config_to_yaml,
    flat_items,
    from_flat,
    load_config,
)
from fedreid.config.schema import FedReIDConfig


def write_run_config(run_dir, cfg: FedReIDConfig) -> None:
    """The resolved config of a run, as YAML, in its folder."""
    from pathlib import Path

    (Path(run_dir) / "config.yaml").write_text(config_to_yaml(cfg))

__all__ = [
    "ConfigError",
    "FedReIDConfig",
    "config_to_yaml",
    "flat_items",
    "from_flat",
    "load_config",
    "write_run_config",
]
