"""The typed config: defaults, overrides, errors, and Flower's flat run config."""

import tomllib
from pathlib import Path

import pytest

from fedreid.config import ConfigError, flat_items, from_flat, load_config
from fedreid.config.loader import flower_run_config_toml
from fedreid.config.presets import STRATEGY_PRESETS, strategy_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_are_typed():
    cfg = load_config(["prune.target=0.7", "data.sites=[duke,market]", "fl.rounds=4"])
    assert cfg.prune.target == pytest.approx(0.7)
    assert cfg.data.sites == ["duke", "market"]
    assert cfg.fl.rounds == 4


@pytest.mark.parametrize(
    "override, words",
    [
        ("prune.targt=0.5", ["prune.targt", "target"]),
        ("prune.target=abc", ["prune.target"]),
        ("agg.combine=sum", ["agg.combine", "product"]),
        ("prune.target=1.5", ["prune.target", "[0, 1]"]),
        ("train.batch_size=30", ["train.batch_size", "num_instances"]),
        ("rounds", ["key=value"]),
        ("dp.clipping_norm=0", ["dp.clipping_norm", "> 0"]),
        ("dp.delta=2", ["dp.delta", "(0, 1)"]),
        ("method.scm.foo=1", ["method.scm.foo", "method.scm allows", "supcon_weight"]),
        ("sites.market.foo=1", ["sites.market allows method"]),
        ("foo=1", ["the top level allows", "prune"]),
    ],
)
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config([override])
    for word in words:
        assert word in str(err.value)


def test_yaml_file_is_merged(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("fl:\n  rounds: 7\nreg:\n  tau: 0.5\n")
    cfg = load_config(["reg.tau=0.2"], f)
    assert cfg.fl.rounds == 7 and cfg.reg.tau == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([], tmp_path / "missing.yaml")


def test_flower_flat_config_round_trips():
    cfg = load_config(["data.sites=[a,b,c]", "prune.step=0.3"])
    flat = {k: (",".join(v) if isinstance(v, list) else v) for k, v in flat_items(cfg)}
    flat["partition-id"] = 3  # Flower's own keys are ignored
    back = from_flat(flat)
    assert back == cfg


def test_pyproject_run_config_matches_schema():
    """pyproject's [tool.flwr.app.config] is generated from the schema; keep them equal."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table = pyproject["tool"]["flwr"]["app"]["config"]
    expected = tomllib.loads(flower_run_config_toml())["tool"]["flwr"]["app"]["config"]
    assert table == expected, "regenerate with fedreid.config.loader.flower_run_config_toml()"
    assert from_flat(table) == load_config([])


@pytest.mark.parametrize("name", list(STRATEGY_PRESETS))
def test_every_preset_loads(name):
    cfg = load_config(strategy_overrides(name))
    assert cfg.fl.strategy == name


def test_unknown_strategy():
    with pytest.raises(ValueError, match="fedklpr"):
        strategy_overrides("fedfoo")


def test_files_and_overrides_win_over_strategy_presets(tmp_path):
    from fedreid.config.presets import strategy_values

    f = tmp_path / "exp.yaml"
    f.write_text("method:\n  name: bot\n")
    cfg = load_config([], f, values=strategy_values("fedklpr"))
    assert cfg.method.name == "bot" and cfg.prune.enabled  # file beats preset, preset kept
    cfg = load_config(["prune.enabled=false"], None, values=strategy_values("fedklpr"))
    assert not cfg.prune.enabled


def test_demo_config_loads():
    cfg = load_config([], ROOT / "sims" / "configs" / "demo.yaml")
    assert cfg.method.name == "bot" and cfg.fl.rounds >= 3


def test_the_demo_compares_half_precision_fedklpr_with_dense_float32_fedavg():
    """What `make demo` runs: its --compare entries over the demo file, as the CLI resolves them."""
    import re

    from fedreid.config.presets import parse_strategy_runs, strategy_values

    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if "fedreid sim --compare" in x)
    runs = parse_strategy_runs(re.search(r"--compare (\S+)", line).group(1))
    cfgs = {r.strategy: load_config(list(r.overrides), ROOT / "sims" / "configs" / "demo.yaml",
                                    values=strategy_values(r.strategy)) for r in runs}
    assert set(cfgs) == {"fedklpr", "fedavg"}
    ours, dense = cfgs["fedklpr"], cfgs["fedavg"]
    assert ours.codec.value_dtype == "float16" and ours.prune.enabled and ours.prune.start_round == 3
    assert dense.codec.value_dtype == "float32" and not dense.prune.enabled
    assert ours.method.name == dense.method.name == "bot" and ours.fl.rounds == dense.fl.rounds


def test_int8_uploads_with_dp_fail_naming_the_fix():
    with pytest.raises(ConfigError, match="codec.upload=difference .or absolute. with DP"):
        load_config(["dp.enabled=true", "codec.upload=difference-int8"])
    assert load_config(["codec.upload=difference-int8"]).codec.upload == "difference-int8"
