"""A checkpoint is data, never code: a planted pickle is refused in one line and runs nothing."""

from __future__ import annotations

import os

import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.training.checkpoint import Checkpoint


class Planted:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"epoch": 1, "payload": Planted(str(marker))}, path)
    with pytest.raises(LookalikeError, match="is not a lookalike checkpoint") as err:
        Checkpoint.load(path)
    assert not marker.exists() and "\n" not in str(err.value)


def test_a_real_checkpoint_round_trips_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    saved = Checkpoint(
        2,
        10,
        [0.5, 0.4],
        model.state_dict(),
        optimizer.state_dict(),
        1.3,
        0.01,
        {"history": [(1.3, 0.01, 10)], "mechanism": "prv"},
        {"plan": {"trainer.epochs": 4}, "size": {"value": 700}},
    )
    saved.save(tmp_path / "last.pt")
    loaded = Checkpoint.load(tmp_path / "last.pt")
    assert loaded.meta == saved.meta and loaded.accountant_state == saved.accountant_state
    assert torch.equal(loaded.model_state["weight"], model.state_dict()["weight"]) and loaded.optimizer_state["state"][0]["step"] == 1
