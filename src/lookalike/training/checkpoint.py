"""Checkpoints that carry the privacy accounting with the weights.

A resumed DP run must continue the accountant, not restart it: the checkpoint stores the
accountant history, the noise multiplier and the ledger reservation it trains under.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lookalike.errors import ConfigError, LookalikeError, no_space_left


@dataclass
class Checkpoint:
    epoch: int  # epochs completed
    steps: int  # optimizer steps taken (each one an accountant step under DP)
    losses: list[float]
    model_state: dict
    optimizer_state: dict
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    accountant_state: dict | None = None
    # Filled in by the caller: what the run trains on and under which ledger reservation.
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(cls, epoch: int, steps: int, losses: list[float], model, optimizer, private) -> "Checkpoint":
        plain = private.plain_model if private is not None else model
        inner = optimizer.original_optimizer if private is not None else optimizer
        return cls(
            epoch=epoch,
            steps=steps,
            losses=list(losses),
            model_state={k: v.detach().cpu().clone() for k, v in plain.state_dict().items()},
            optimizer_state=inner.state_dict(),
            noise_multiplier=private.noise_multiplier if private is not None else None,
            sample_rate=private.sample_rate if private is not None else None,
            accountant_state=dict(private.engine.accountant.state_dict()) if private is not None else None,
        )

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash mid-save never leaves a truncated checkpoint behind."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        # torch.save reports a full disk as an opaque RuntimeError ("unexpected pos"): serialise in
        # memory, then write with Python's I/O, whose OSError carries ENOSPC.
        buffer = io.BytesIO()
        torch.save(asdict(self), buffer)
        fix = "free space there or point paths.output_dir (or hydra.run.dir) at another device; the run's reservation stays charged (training had begun)"
        try:
            with no_space_left(f"checkpoint '{path}'", fix):
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as file:
                    file.write(buffer.getbuffer())
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a partial file would only take more of the space
            raise

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        path = Path(path)
        if not path.is_file():
            raise LookalikeError(f"checkpoint '{path}' does not exist: set trainer.resume_from to a last.pt written by a run")
        try:
            # weights_only: tensors and plain types only; unpickling a planted file would run its code.
            raw = torch.load(path, map_location="cpu", weights_only=True)
            return cls(**raw)
        except Exception as exc:  # a foreign or corrupt file: say so in one line
            raise LookalikeError(f"checkpoint '{path}' is not a lookalike checkpoint ({type(exc).__name__})") from exc

    def check_fits(self, model: torch.nn.Module) -> None:
        """Refuse, in one line and before anything is logged, a checkpoint whose weights are not
        the model this run builds: one written by another version, whose small-seed rule chose
        another width for the same seed estimate, or an edited file. The shapes are compared,
        name by name; the reservation stays for a resume that fits."""
        mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in self.model_state.items()}
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differ:
            first = differ[0]
            raise ConfigError(
                "trainer.resume_from",
                f"the checkpoint's model is not the one this run builds ({first}: {theirs.get(first)} there, {mine.get(first)} here): "
                "resume with the version and settings that wrote it, or start a fresh run",
            )
