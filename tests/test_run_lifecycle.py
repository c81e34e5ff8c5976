"""A run's hold on the budget is one context manager: released when it fails before any DP step
touches the data, kept charged when it fails after, and never left without its spend recorded."""

from __future__ import annotations

import json

import pytest

from lookalike.privacy.accounting import resolve_delta
from lookalike.privacy.ledger import Ledger
from lookalike.training.config import train_config
from lookalike.training.prepare import prepare
from lookalike.training.run_context import RunContext


def _context(cfg, data) -> RunContext:
    ctx = RunContext(cfg, data, resolve_delta(None, data.publisher_rows), Ledger(cfg.ledger.path))
    ctx.check_rules()
    return ctx


def test_abort_paths_release_before_training_and_keep_the_charge_after(cfg_factory):
    cfg = train_config(cfg_factory("privacy.target_epsilon=1"))
    data = prepare(cfg)
    ledger = Ledger(cfg.ledger.path)

    before = _context(cfg, data)
    with pytest.raises(RuntimeError, match="mlflow is down"), before.reservation(None):
        raise RuntimeError("mlflow is down")  # e.g. the tracking server, before any DP step
    after = _context(cfg, data)
    with pytest.raises(RuntimeError, match="out of memory"), after.reservation(None):
        after.begin_training()
        raise RuntimeError("out of memory")
    unrecorded = _context(cfg, data)
    with pytest.raises(RuntimeError, match="without recording its spend"), unrecorded.reservation(None):
        unrecorded.begin_training()  # and then forgets to record what it spent
    early = _context(cfg, data)
    with pytest.raises(RuntimeError, match="finish before training"), early.reservation(None):
        early.finish()
    counted = _context(cfg, data)
    with pytest.raises(RuntimeError, match="mlflow is down"), counted.reservation(None):
        counted.release_counts()  # the DP size and match counts are out: they stay charged
        raise RuntimeError("mlflow is down")

    statuses = {e["id"]: e["status"] for e in ledger.entries(before.budget.fingerprint)}
    assert statuses == {
        before.entry_id: "released",
        after.entry_id: "reserved",
        unrecorded.entry_id: "reserved",
        early.entry_id: "released",
        counted.entry_id: "spent",
    }
    size_epsilon = cfg.privacy.size_epsilon  # 2.0 in the tests' debug profile
    assert ledger.entry(after.entry_id)["reserved_epsilon"] == pytest.approx(1.0 + size_epsilon + 0.2)
    spent = ledger.entry(counted.entry_id)
    assert spent["spent_epsilon"] == pytest.approx(size_epsilon) and json.loads(spent["events"]) == [[counted.size.noise_multiplier, 1.0, 1]]
    assert json.loads(spent["plan"])["size"]["value"] == counted.size.value
