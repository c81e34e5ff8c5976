"""A resumed run keeps the plan its ledger reservation covers: more epochs, another batch or
another epsilon would spend beyond it (an audit raised epochs from 2 to 12 on a resume and spent
2.70 of a 1.2 reservation). Refused in one line, charging nothing more."""

from __future__ import annotations

import pytest

from lookalike.errors import ConfigError
from lookalike.privacy.ledger import Ledger
from lookalike.training.train import run


def test_a_resume_that_changes_the_plan_is_refused(cfg_factory, tmp_path):
    out = tmp_path / "out"
    cfg = cfg_factory("privacy.target_epsilon=1.0", "owner.epsilon=1.3", out=out)
    run(cfg)
    (checkpoint,) = out.glob("runs/*/checkpoints/last.pt")
    before = Ledger(cfg.ledger.path).status()
    for change in ("trainer.epochs=12", "trainer.batch_size=64", "privacy.target_epsilon=1.5", "privacy.max_grad_norm=2.0"):
        key = change.split("=")[0]
        with pytest.raises(ConfigError, match="a resumed run keeps its plan") as err:
            run(cfg_factory("privacy.target_epsilon=1.0", change, f"trainer.resume_from={checkpoint}", out=out))
        assert err.value.key == key and Ledger(cfg.ledger.path).status() == before
