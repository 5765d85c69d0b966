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
