"""A sweep run's cache key: the same settings give the same key, and any change to the recipe (its `base:` file
included), to the overrides, to the evaluation sets or to the run's own settings gives another one."""

import dataclasses

import yaml

from trl_dynamicpo.sweep import GridPoint, SweepPlan


def _plan(tmp_path, **changes) -> SweepPlan:
    return dataclasses.replace(SweepPlan(recipe=str(tmp_path / "recipe.yaml"), sweep_dir=tmp_path / "sweep",
                                         eval_sets={"eval": None}), **changes)  # fmt: skip


def test_the_key_follows_every_setting(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"learning_rate": 1e-3}))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "train": {"beta": 1.0}}))
    point = GridPoint("dmpo", "dynamicpo", 3, 0)
    key = _plan(tmp_path).key(point.settings())
    assert _plan(tmp_path).key(point.settings()) == key
    assert _plan(tmp_path, keep_models=False).key(point.settings()) == key  # where outputs go changes no result
    changed = [
        _plan(tmp_path, train_overrides={"learning_rate": 2e-3}).key(point.settings()),
        _plan(tmp_path, sft_overrides={"max_steps": 2}).key(point.settings()),
        _plan(tmp_path, eval_overrides={"protocol": "both"}).key(point.settings()),
        _plan(tmp_path, eval_sets={"eval": None, "heldout": "h.jsonl"}).key(point.settings()),
        _plan(tmp_path).key(GridPoint("dmpo", "plain", 3, 0).settings()),
        _plan(tmp_path).key(GridPoint("dmpo", "dynamicpo", 3, 1).settings()),
    ]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "train": {"beta": 0.5}}))
    changed.append(_plan(tmp_path).key(point.settings()))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "train": {"beta": 1.0}}))
    assert _plan(tmp_path).key(point.settings()) == key
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"learning_rate": 1e-4}))
    changed.append(_plan(tmp_path).key(point.settings()))
    assert key not in changed and len(set(changed)) == len(changed)


def test_a_point_sets_the_train_keys_of_its_variant():
    assert GridPoint("sdpo", "beta_only", 5, 2).settings() == {
        "multi_negative_loss": "sdpo", "boundary_selection": False, "dynamic_beta": True, "num_negatives": 5, "seed": 2,
    }  # fmt: skip
