"""Your own user tower: ``model.user_tower._target_=my_pkg.towers.CrossTower``.

The contract (docs/your-own-model.md walks through an example):

- ``_target_`` names a class (or a function returning an ``nn.Module``) in an importable module,
  ``package.module.Name``. Its other keys under ``model.user_tower`` are its own keyword
  arguments (``+model.user_tower.layers=3``); Hydra builds it as it builds the optimizer.
- It is called with two more keyword arguments, given by the package: ``spec``, the
  :class:`~lookalike.data.features.FeatureSpec` of the encoded inputs (``spec.numeric_width``
  numeric inputs; ``spec.categorical[j].cardinality`` ids for categorical column j;
  ``spec.multi_categorical[k].cardinality`` ids and ``max_length`` positions for list column k),
  and ``output_dim`` (``model.output_dim``), the width of the embedding it returns.
- ``forward(numeric, categorical, *multi)`` takes what the built-in UserTower takes: ``numeric``
  float32 [batch, numeric_width] (standardised); ``categorical`` int64 [batch, n_categorical];
  one int64 [batch, max_length] per list column, padded with id 0 (missing), 1 out of
  vocabulary. It returns float [batch, output_dim], row b a function of user b's inputs alone.
- The audience tower, the loss, DP-SGD, the budget, MLflow and export stay the package's.
  ``model.embedding_dim``, ``hidden_dims`` and ``dropout`` are the built-in tower's settings:
  a custom tower takes its own; ``model.input_projection`` and the small-seed rule do not apply.

Before a run reserves anything (training/tower_checks.py) the tower is built, run on a few
made-up users and refused in one line if it mixes examples (BatchNorm), returns the wrong shape,
or leaves a weight without per-example gradients. Layers the fused clipping covers (nn.Linear on
[batch, features], nn.Embedding) train on the fused route; any other trainable layer makes the
run take Opacus' per-sample route (``privacy.grad_sample_mode_used``). Under a room file the
module must be one the room's ``code`` list allows (runtime/room.py).

The bundle records ``_target_`` and the arguments (``model.json``) and export rebuilds the tower
from them; the MLflow model carries the module's top-level package (``code_paths``) unless it is
an installed distribution, which the serving environment then installs.
"""

from __future__ import annotations

import importlib
import site
import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from torch import nn

from lookalike.data.features import FeatureSpec
from lookalike.errors import ConfigError, LookalikeError, one_line
from lookalike.model.config import tower_target

KEY = "model.user_tower"
PACKAGED = ("lookalike", "torch")  # top-level packages a model never needs to carry


def build_user_tower(spec: FeatureSpec, user_tower: dict[str, Any], output_dim: int) -> nn.Module:
    """Instantiate the configured tower; a bad target or argument is one line naming the key."""
    target = tower_target(user_tower)
    try:
        # Partial first: Hydra would turn the spec (a dataclass) into a config node if passed here.
        tower = instantiate(user_tower, _partial_=True, _convert_="all")(spec=spec, output_dim=output_dim)
    except Exception as exc:  # Hydra's errors (its target policy's too), the tower's own
        # Hydra's "Error locating target" hides why: the import error it chains says it.
        reason = exc.__cause__ if str(exc).startswith("Error locating target") and exc.__cause__ else exc
        raise ConfigError(KEY, f"'{target}' cannot be built ({one_line(reason)}): fix its _target_ or arguments") from None
    if not isinstance(tower, nn.Module):
        raise ConfigError(KEY, f"'{target}' returned a {type(tower).__name__}, not a torch.nn.Module")
    return tower


def require_importable(target: str, where: str) -> None:
    """Import ``target``'s module, or refuse in one line naming it (and where the top-level
    package was found instead, when another distribution's package shadows it)."""
    module = target.rpartition(".")[0] or target
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        top = module.partition(".")[0]
        found = sys.modules.get(top)
        shadow = f"; '{top}' resolves to {Path(found.__file__).parent}" if found is not None and found.__file__ else ""
        raise LookalikeError(
            f"{where} needs module '{module}' for its user tower ({target}), which cannot be imported ({type(exc).__name__}: {exc}){shadow}: "
            "install it or put the folder holding it first on PYTHONPATH"
        ) from None


def code_paths(target: str | None) -> list[str]:
    """What an MLflow model must carry to rebuild the tower: the top-level package (or module
    file) of ``target``'s module, unless it is the package's own, torch, or installed in
    site-packages (a distribution the serving environment installs, not a copy)."""
    if target is None:
        return []
    module = importlib.import_module(target.rpartition(".")[0])
    top = module.__name__.partition(".")[0]
    if top in PACKAGED or module.__file__ is None:
        return []
    path = Path(module.__file__).resolve()
    for _ in range(module.__name__.count(".") + (1 if path.name == "__init__.py" else 0)):
        path = path.parent
    installed = [Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]]
    if any(path.is_relative_to(folder) for folder in installed):
        return []
    return [str(path)]
