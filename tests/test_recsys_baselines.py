import pytest

from trl_dynamicpo.recsys import (
    RecExample,
    baseline_metrics,
    load_sample,
    popularity_baseline,
    random_baseline,
    ranking_metrics,
    transition_baseline,
)
from trl_dynamicpo.recsys.baselines import item_counts


TRAIN = [
    RecExample(["a", "b"], ["c", "x"], "c"),  # b -> c
    RecExample(["b", "c"], ["d", "x"], "d"),  # c -> d
    RecExample(["a", "b"], ["c", "x"], "c"),  # b -> c
    RecExample(["e", "b"], ["f", "x"], "f"),  # b -> f
]


def test_popularity_counts_histories_and_targets():
    assert item_counts(TRAIN) == {"a": 2, "b": 4, "c": 3, "d": 1, "e": 1, "f": 1}
    scores = popularity_baseline(TRAIN, [RecExample(["z"], ["d", "b", "c", "unseen"], "b")])[0]
    assert sorted(range(4), key=lambda i: -scores[i]) == [1, 2, 0, 3]


def test_transition_last_item_and_weights():
    evaluation = [RecExample(["c", "b"], ["f", "c", "d"], "c")]
    # Last item b: b -> c twice, b -> f once, b -> d never.
    last = transition_baseline(TRAIN, evaluation)[0]
    assert last[1] > last[0] > last[2]
    # A window of 2 also counts items two steps later: a -> c (twice) and a -> b (twice), never a -> d.
    window = transition_baseline(TRAIN, [RecExample(["a"], ["c", "b", "d"], "c")], window=2)[0]
    assert window[0] == pytest.approx(window[1], abs=0.5) and window[0] > 1 and window[2] < 1
    with pytest.raises(ValueError):
        transition_baseline(TRAIN, evaluation, weights=())


def test_random_baseline_is_seeded():
    examples = load_sample("val")[:20]
    assert random_baseline(examples, 0) == random_baseline(examples, 0)
    assert random_baseline(examples, 0) != random_baseline(examples, 1)


def test_baselines_on_bundled_sample():
    train, val = load_sample("train"), load_sample("val")
    result = baseline_metrics(train, val)
    assert set(result) == {"random", "popularity", "transition_last", "transition", "cooccurrence"}
    for metrics in result.values():
        assert set(metrics) >= {"hr@1", "hr@5", "ndcg@5", "mrr"}
    assert result["random"]["hr@1"] < 0.12
    assert 0.15 < result["popularity"]["hr@1"] < 0.35
    assert result["transition"]["hr@1"] > result["popularity"]["hr@1"] + 0.1
    assert result["cooccurrence"]["hr@1"] >= result["transition"]["hr@1"]
    # Baselines read histories and targets only, so public and leak-free lists give similar numbers.
    public = popularity_baseline(train, load_sample("val", leak_free=False))
    targets = [ex.target_index for ex in load_sample("val", leak_free=False)]
    assert abs(ranking_metrics(public, targets)["hr@1"] - result["popularity"]["hr@1"]) < 0.08
