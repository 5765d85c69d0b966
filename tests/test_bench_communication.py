"""The communication benchmark's variant syntax: STRATEGY@DTYPE[:key=value...]."""

import pytest

from sims.bench.communication import parse_variant


def test_a_variant_names_its_strategy_dtype_and_own_overrides():
    assert parse_variant("fedklpr@float16") == ("fedklpr", "float16", [])
    assert parse_variant("fedklpr@float16:codec.upload=absolute:prune.target=0.4") == (
        "fedklpr", "float16", ["codec.upload=absolute", "prune.target=0.4"])


@pytest.mark.parametrize("text, words", [
    ("fedklpr@float8", "float32, float16 or bfloat16"),
    ("fedklpr@float16:absolute", "not key=value"),
    ("nope@float32", "nope"),
])
def test_a_bad_variant_says_what_to_write(text, words):
    with pytest.raises((SystemExit, ValueError)) as err:
        parse_variant(text)
    assert words in str(err.value)


def _row(variant: str, seed: int, m: float, total: float) -> dict:
    return {"variant": variant, "seed": seed, "mAP": m, "rank1": m, "personal_mAP": m, "train_up": total / 2,
            "train_down": total / 2, "eval_up": 0.0, "eval_down": 0.0, "total": total, "crr_restores": 0,
            "final_prune_ratio": 0.5, "curve": {"rounds": [0, 1], "mAP": [0.1, m], "bytes": [0, total]}}


def test_runs_from_separate_jobs_are_tabled_together_each_paired_with_its_seeds_baseline(tmp_path):
    from sims.bench.communication import write_results

    rows = [_row("dense", 0, 0.30, 100e6), _row("dense", 1, 0.40, 100e6),
            _row("sparse", 0, 0.29, 40e6), _row("sparse", 1, 0.38, 50e6)]
    write_results(rows, "dense", "two jobs", tmp_path)
    text = (tmp_path / "communication.md").read_text()
    sparse = next(line for line in text.splitlines() if line.startswith("| sparse"))
    assert "| 55 ± 7.1 |" in sparse  # 60 % and 50 % saved
    assert "| -1.5 ± 0.71 |" in sparse  # -1 and -2 points
    assert (tmp_path / "communication.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="pass --baseline"):
        write_results(rows, "fedcapr@float32", "two jobs", tmp_path)
