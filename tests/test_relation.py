"""What one seed user changes: exactly one training example (add/remove, the relation the
accountant is for), never the feature statistics the model carries, and the training-set size
only through its DP estimate."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from lookalike.data.matching import lay_out, split_draws
from lookalike.privacy.mechanisms import gaussian_sigma
from lookalike.privacy.size_release import release_size
from lookalike.training.config import train_config
from lookalike.training.prepare import prepare

KW = dict(holdout_fraction=0.3, negative_rate=0.4, eval_negative_rate=0.2)


def examples(ids: pa.Array, seeds: dict, draws: np.ndarray) -> Counter:
    """The training set as a multiset of (user, target) examples."""
    ts = lay_out(ids, seeds, draws=draws, **KW)
    users = np.asarray(ids.to_pylist(), dtype=object)[ts.train_rows]
    return Counter((u, tuple(label)) for u, label in zip(users, ts.train_labels.tolist()))


def test_joining_the_seed_adds_or_removes_exactly_one_example():
    ids = pa.array([f"u{i}" for i in range(3000)])
    draws = split_draws(ids, 7)
    base = np.array([f"u{i}" for i in range(0, 3000, 5)], dtype=object)
    before = examples(ids, {"a": base}, draws)
    kinds = Counter()
    for i in range(1, 600, 5):  # users outside the seed, whatever their draws
        user = f"u{i}"
        after = examples(ids, {"a": np.sort(np.append(base, user))}, draws)
        added, removed = after - before, before - after
        assert sum(added.values()) + sum(removed.values()) <= 1, user  # at most one example in or out, no label flipped
        assert all(u == user for u, _ in list(added) + list(removed))
        held = draws[i, 0] < KW["holdout_fraction"]
        background = KW["eval_negative_rate"] <= draws[i, 1] < KW["eval_negative_rate"] + KW["negative_rate"]
        kinds[("held" if held else "trains", "background" if background else "other")] += 1
        if held:
            assert not added and (removed == Counter({(user, (0.0,)): 1})) == background
        else:
            assert added == Counter({(user, (1.0,)): 1}) and not removed
    assert len(kinds) == 4  # every case met: held out or not, in the background or not


def test_feature_statistics_do_not_depend_on_the_seed(cfg_factory, demo_dir, tmp_path):
    """The vocabularies and standardisation the model ships come from every publisher user,
    seed or not: the guarantee for seed membership covers them without noise."""
    rows = [json.loads(line) for line in (demo_dir / "seed.jsonl").read_text().splitlines()]
    other = tmp_path / "seed.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows[::2]))
    one = prepare(train_config(cfg_factory(owner=False)))
    two = prepare(train_config(cfg_factory(f"data.seed_path={other}", owner=False)))
    assert one.spec == two.spec and one.users.digest == two.users.digest
    assert one.n_train != two.n_train  # the seeds do differ in what they train on


def test_the_size_estimate_has_the_stated_noise():
    n, eps, delta, draws = 5000, 0.05, 1e-7, 4000
    sigma = gaussian_sigma(eps, delta, 1.0)
    values = np.array([release_size(n, eps, delta).value for _ in range(draws)], dtype=np.float64)
    realised = np.sqrt(np.mean((values - n) ** 2))
    # rounding adds 1/12 to the variance; the sample rms has relative s.e. 1/sqrt(2 draws)
    assert realised == pytest.approx((sigma**2 + 1 / 12) ** 0.5, rel=6 / (2 * draws) ** 0.5)
    assert release_size(n, eps, delta).noise_multiplier == sigma and sigma > 50
