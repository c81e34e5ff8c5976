"""The owners' minimum seed size is decided on the run's charged DP counts, never on the exact
matched count. An audit tightened ``rules.min_matching_seed_size`` step by step, made each run
that passed the check fail right after it, before any reservation, and recovered the exact count
(1182) by binary search, one target user's membership with it, for nothing. Now the run reserves
first, releases the DP size and match counts, decides on them, and a refusal keeps that release
charged: every probe of the search costs ``privacy.size_epsilon`` and answers with noise."""

from __future__ import annotations

import json

import pytest

from lookalike.errors import DataError
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.mechanisms import gaussian_sigma
from lookalike.training.train import run
from tests.conftest import files_under


def test_a_refusal_on_the_minimum_seed_size_is_charged_and_decided_on_a_dp_count(cfg_factory, demo_dir, tmp_path):
    out = tmp_path / "out"
    probes = ("rules.min_matching_seed_size=400", "rules.min_matching_seed_size=100000")
    for n, probe in enumerate(probes, start=1):
        cfg = cfg_factory(probe, out=out)
        with pytest.raises(DataError, match="matches fewer than .* by the run's DP count") as err:
            run(cfg)
        assert "\n" not in str(err.value)
        ledger = Ledger(cfg.ledger.path)
        (status,) = ledger.status()
        entries = ledger.entries(status.fingerprint)
        assert len(entries) == n and all(e["status"] == "spent" for e in entries)
        size_epsilon = float(cfg.privacy.size_epsilon)
        assert status.spent_epsilon == pytest.approx(n * size_epsilon)  # each probe pays for its counts
        # The release is the 3-vector (N, luxury, sports): its noise multiplier is that of the
        # Gaussian mechanism at (size_epsilon, size_delta = min(1e-7, 1/(100 R))), whatever the dimension.
        (event,) = json.loads(entries[-1]["events"])
        assert event[1:] == [1.0, 1] and event[0] == pytest.approx(gaussian_sigma(size_epsilon, 1e-7, 3**0.5) / 3**0.5)
        released = json.loads(entries[-1]["plan"])["size"]["matched"]
        assert set(released) == {"luxury", "sports"}
    # A refused run logs no MLflow run and writes no run folder or checkpoint.
    assert not [p for p in files_under(out) if p.name not in ("privacy_ledger.sqlite", "mlflow.db", "mlflow.db.lock")]


def test_the_counts_the_decision_reads_are_noisy(cfg_factory, tmp_path, monkeypatch):
    """At the debug profile's size_epsilon (noise std about 4) the released counts scatter around
    the exact ones; a check on the exact count would show none of that scatter."""
    from lookalike.training import run_context

    seen: list[dict] = []
    real = run_context.release_size

    def spy(n, epsilon, delta, matched=None):
        estimate = real(n, epsilon, delta, matched)
        seen.append({"exact": dict(matched or {}), "released": estimate.matched})
        return estimate

    monkeypatch.setattr(run_context, "release_size", spy)
    for i in range(6):
        with pytest.raises(DataError):
            run(cfg_factory("rules.min_matching_seed_size=100000", out=tmp_path / f"out{i}"))
    exact = seen[0]["exact"]
    diffs = [r["released"][a] - exact[a] for r in seen for a in exact]
    assert all(r["exact"] == exact for r in seen) and len(diffs) == 12
    assert len(set(diffs)) > 3 and all(abs(d) < 40 for d in diffs)  # std about 4.2: 12 draws, 10 sigma margin


def test_the_decision_follows_the_released_counts_not_the_exact_ones(cfg_factory, tmp_path, monkeypatch):
    """Released counts 5,000 above the truth (the noise fixed for the test) let a run through a
    minimum of 1,000 that the exact counts (about 120) would fail: the check reads the release."""
    from lookalike.privacy.size_release import SizeEstimate
    from lookalike.training import run_context

    monkeypatch.setattr(run_context, "release_size", lambda n, epsilon, delta, matched: SizeEstimate(n, 1.0, {a: c + 5000 for a, c in (matched or {}).items()}))
    cfg = cfg_factory("rules.min_matching_seed_size=1000", "privacy.target_epsilon=1", "trainer.epochs=1", out=tmp_path / "out")
    run(cfg)
    (status,) = Ledger(cfg.ledger.path).status()
    assert status.runs == 1 and status.spent_epsilon > float(cfg.privacy.size_epsilon)  # it trained
