"""The `fedreid` command: help on every command, data synth/check, config errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["data"], ["data", "synth"], ["data", "check"], ["train"],
                                  ["sim"], ["config"]])
def test_help_everywhere(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_config_prints_keys_types_help_or_yaml_and_rejects_bad_keys():
    ok = runner.invoke(app, ["config", "prune.target=0.3"], env={"COLUMNS": "300"})
    assert ok.exit_code == 0
    line = next(x for x in ok.output.splitlines() if x.startswith("prune.target"))
    assert "float" in line and "0.3" in line and "overall sparsity" in line
    choices = next(x for x in ok.output.splitlines() if x.startswith("method.name "))
    assert "one of: bot, capr, scm, vitc" in choices
    yaml = runner.invoke(app, ["config", "--yaml", "prune.target=0.3"])
    assert yaml.exit_code == 0 and "target: 0.3" in yaml.output
    bad = runner.invoke(app, ["config", "prune.targt=0.3"])
    assert bad.exit_code == 2 and "prune.targt" in bad.output


def test_synth_then_check(tmp_path):
    out = tmp_path / "syn"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--scale", "0.05", "--size", "32x16",
                                 "--sites", "viper", "--workers", "1"])
    assert result.exit_code == 0, result.output
    check = runner.invoke(app, ["data", "check", str(out / "viper"), "--json"])
    assert check.exit_code == 0, check.output
    report = json.loads(check.output)
    assert report["train"]["images"] > 0 and report["query"]["ids"] >= 30


def test_synth_rejects_bad_size(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--size", "big"])
    assert result.exit_code == 2 and "HxW" in result.output


def test_check_names_missing_folder(tmp_path):
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nope"), "--dataset", "market1501"])
    assert result.exit_code == 1 and "nope" in result.output
