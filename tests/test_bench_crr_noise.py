from sims.bench.crr_noise import noise_and_restores


def train(rnd: int, ratio: float, score: float, **extra) -> dict:
    return {"kind": "train", "round": rnd, "sites": {"a": {"prune_ratio": ratio, "crr_score": score, **extra}}}


def test_drops_count_only_rounds_without_a_step_and_restores_are_split_by_the_step_they_undid():
    records = [
        train(1, 0.0, 0.50),
        train(2, 0.0, 0.47),  # no step in round 1: a drop of 0.03 is noise
        train(3, 0.2, 0.48),  # a step in round 3 ...
        train(4, 0.2, 0.40, crr_check_score=0.30, crr_restored=1.0),  # ... undone (a real step)
        train(5, 0.2, 0.41),  # no step in round 4: 0.40 -> 0.41
        train(6, 0.2, 0.38, crr_check_score=0.38, crr_restored=1.0),  # an empty step undone
        {"kind": "evaluate", "round": 6, "sites": {}},
    ]
    stats = noise_and_restores(records)
    # pairs (1,2), (2,3), (4,5), (5,6); (3,4) follows the step taken in round 3
    assert [round(d, 2) for d in stats["drops"]] == [0.03, -0.01, -0.01, 0.03]
    assert (stats["real_restores"], stats["empty_restores"]) == (1, 1)
