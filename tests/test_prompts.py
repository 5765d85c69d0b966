"""Prompt-driven identities: the prompt language, its errors, held-out styles, rendering
from prompts (determinism, metadata, reader), and the `fedreid data generate` command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fedreid.data.readers import load_dataset
from fedreid.data.synth import (
    DEFAULT_HELD_OUT,
    SITE_KEYS,
    generate_from_prompts,
    held_out_sites,
    parse_prompt,
    parse_prompts,
    random_prompts,
    site_styles,
)
from fedreid.data.synth.attributes_truth import present
from fedreid.data.synth.from_prompts import prompt_identity

EXAMPLE = (
    "red t-shirt with white stripes, blue jeans, black backpack, no hat, long blonde hair, "
    "fair skin, slim tall build, dim warm light, front and side views, street background"
)
RENDER = {"size": (64, 32), "images_per_identity": 4, "cameras": 2, "workers": 1}


def _digests(folder: Path) -> dict[str, str]:
    """Every file's hash; meta.json without the folder's own name."""
    out = {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.jpg"))
    }
    meta = json.loads((folder / "meta.json").read_text())
    del meta["site"]
    out["meta.json"] = hashlib.sha256(json.dumps(meta).encode()).hexdigest()
    return out


def test_parse_a_full_prompt():
    p = parse_prompt(EXAMPLE)
    assert (p.upper, p.upper_garment, p.sleeves, p.pattern, p.upper2) == (
        "red", "t-shirt", "short", "stripes", "white"
    )
    assert (p.lower, p.lower_style, p.bag, p.bag_colour, p.hat) == (
        "blue", "trousers", "backpack", "black", "none"
    )
    assert (p.hair, p.hair_length, p.skin, p.width, p.height) == ("blonde", "long", 1, "slim", "tall")
    assert (p.light, p.cast, p.views, p.scenes) == (("dim",), ("warm",), ("front", "side"), ("street",))
    jeans = parse_prompt("jeans, shoulder bag")
    assert (jeans.lower, jeans.bag, jeans.upper) == ("denim", "shoulder", None)


def test_identity_follows_the_prompt():
    ident = prompt_identity(parse_prompt(EXAMPLE), seed=0, pid=1)
    o = ident.outfits[0]
    assert (o.upper, o.pattern, o.upper2, o.lower, o.bag, o.hat) == ("red", "stripes", "white", "blue", "backpack", "none")
    assert (ident.hair, ident.hair_length, ident.skin) == ("blonde", "long", 1)
    assert 0.85 <= ident.width < 0.967 and ident.height >= 1.0
    assert {"upper:red", "lower:blue", "pattern:stripes", "bag:backpack", "build:slim"} <= present(ident, 0)


@pytest.mark.parametrize(
    ("text", "word", "rule"),
    [
        ("magenta shirt", "magenta", "vocabulary: upper garments"),
        ("long-sleeved jeans", "long-sleeved", "before 'jeans' use only"),
        ("red shirt, blue", "blue", "no noun after"),
        ("no backpack", "backpack", "no bag"),
        ("red blue shirt", "blue", "one colour"),
        ("hat", "hat", "cap"),
        ("red shirt, blue shirt", "blue", "given twice"),
    ],
)
def test_unparseable_words_name_line_word_and_vocabulary(tmp_path, text, word, rule):
    path = tmp_path / "people.txt"
    path.write_text(f"# people\nblack coat\n{text}\n")
    with pytest.raises(ValueError, match=rf"people\.txt:3: word '{word}'.*{rule}"):
        parse_prompts(path)


def test_prompt_files_need_two_people(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("# only one\nred shirt\n\n")
    with pytest.raises(ValueError, match="at least 2"):
        parse_prompts(path)
    with pytest.raises(ValueError, match="unreadable"):
        parse_prompts(tmp_path / "missing.txt")


def test_random_prompts_parse_and_avoid_held_out_styles():
    prompts = random_prompts(30, 4)
    assert prompts == random_prompts(30, 4) and prompts != random_prompts(30, 5)
    words = {w for p in prompts for w in parse_prompt(p).style_words}
    assert words and not words & set(DEFAULT_HELD_OUT)
    held = random_prompts(10, 4, exclude_styles=["dim", "side", "lawn"])
    assert not {"dim", "side", "lawn"} & {w for p in held for w in parse_prompt(p).style_words}
    with pytest.raises(ValueError, match="not style words"):
        random_prompts(3, 0, exclude_styles=["purple"])
    with pytest.raises(ValueError, match="every one of the views"):
        random_prompts(3, 0, exclude_styles=["front", "back", "side"])
    with pytest.raises(ValueError, match="random"):
        random_prompts(1, 0)


def test_synthetic8_styles_are_describable_and_some_held_out():
    for key in SITE_KEYS:
        for text in site_styles(key):
            assert parse_prompt(text).style_words  # every camera is a phrase of the language
    assert held_out_sites() == {"cuhk03": [0, 1], "cuhk01": [1], "ilids": [0, 1]}


def test_generation_is_deterministic_and_records_prompts(tmp_path):
    prompts = [EXAMPLE, "navy jacket, khaki trousers, grey cap", "yellow top, black skirt, back view"]
    a = generate_from_prompts(prompts, tmp_path / "a", seed=2, **RENDER)
    generate_from_prompts(prompts, tmp_path / "b", seed=2, **RENDER)
    generate_from_prompts(prompts, tmp_path / "c", seed=3, **RENDER)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert a["counts"]["train_all"]["images"] + a["counts"]["query"]["images"] + a["counts"]["gallery"]["images"] == 12
    assert [meta["identities"][str(i)]["prompt"] for i in (1, 2, 3)] == prompts
    for entry in meta["images"].values():
        assert entry["prompt"] == prompts[entry["pid"] - 1]
        assert entry["style"]["background"] not in DEFAULT_HELD_OUT
        if entry["pid"] == 1:
            assert (entry["style"]["background"], entry["style"]["light"], entry["style"]["cast"]) == (
                "street", "dim", "warm"
            )
            assert entry["style"]["viewpoint"] in ("front", "side")
        if entry["pid"] == 3:
            assert entry["viewpoint"] == "back"
    splits = load_dataset(tmp_path / "a", "fedreid")
    assert splits.summary()["train"]["images"] == a["counts"]["train_all"]["images"]
    first = next(x for x in splits.train + splits.query + splits.gallery if x.pid == 1)
    assert first.meta["attributes"]["upper:red"] == 1 and first.meta["attributes"]["upper:blue"] == 0


def test_held_out_styles_are_refused_and_invisible_attributes_recorded(tmp_path):
    with pytest.raises(ValueError, match="line 2: style 'corridor' is held out"):
        generate_from_prompts(["red shirt", "blue shirt, corridor background"], tmp_path / "x", **RENDER)
    generate_from_prompts(
        ["red shirt with white logo, back view", "blue shirt with black logo, back view", "green coat, back view"],
        tmp_path / "y", **RENDER,
    )
    truth = json.loads((tmp_path / "y" / "meta.json").read_text())["attribute_truth"]["attributes"]
    assert truth["pattern:logo"]["class"] == "invisible"  # worn, never facing a camera
    with pytest.raises(ValueError, match="images_per_identity"):
        generate_from_prompts(["red shirt", "blue shirt"], tmp_path / "z", **{**RENDER, "images_per_identity": 1})


def test_cli_generate(tmp_path):
    import typer
    from typer.testing import CliRunner

    from cli.data_generate import generate

    app = typer.Typer()
    app.command()(generate)
    runner = CliRunner()
    ok = runner.invoke(app, ["--random", "4", "--out", str(tmp_path / "g"), "--size", "64x32",
                             "--images-per-identity", "4", "--cameras", "2", "--workers", "1"])
    assert ok.exit_code == 0, ok.output
    assert "held-out styles: corridor, station" in ok.output and (tmp_path / "g" / "meta.json").is_file()
    both = runner.invoke(app, ["--random", "4", "--prompts", "x.txt", "--out", str(tmp_path / "h")])
    assert both.exit_code == 2 and "exactly one" in both.output
    bad = tmp_path / "bad.txt"
    bad.write_text("red shirt\nmagenta shirt\n")
    failed = runner.invoke(app, ["--prompts", str(bad), "--out", str(tmp_path / "h")])
    assert failed.exit_code == 2 and "bad.txt:2: word 'magenta'" in failed.output


def test_workers_do_not_change_the_files(tmp_path):
    prompts = random_prompts(20, 1)
    generate_from_prompts(prompts, tmp_path / "one", seed=1, **RENDER)
    generate_from_prompts(prompts, tmp_path / "two", seed=1, **{**RENDER, "workers": 2})
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")


def test_main_command_registers_generate_and_kinds(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    shown = runner.invoke(app, ["data", "generate", "--help"])
    assert shown.exit_code == 0 and "--prompts" in shown.output and "--random" in shown.output
    kinds = runner.invoke(app, ["data", "synth", "--help"])
    assert kinds.exit_code == 0 and "--kinds" in kinds.output
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--kinds", "drone"])
    assert bad.exit_code == 2 and "aerial" in bad.output and "clothes" in bad.output
