"""The ``model`` section: which model kind (``model/registry.py``) and its hyperparameters, logged
with the model so export can rebuild it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lookalike.errors import ConfigError
from lookalike.settings import one_of, require, whole

# The small-seed rule's projection width grows with the seed (epsilon 1, 3 splits, docs/utility.md):
# at 150 seed users 8 components kept 0.84-0.96x of our own non-private lift on five real tables,
# 16 kept 0.73-1.00x (every weight of the head takes noise); at 240 training seed users 8 still
# beat 16 on four of five tables, at 400 16 beat 8 on three; at 600 16 beat the tower on four of
# five (census_married by 16%, Fertility lost 3%) where 8 only tied it.
FEW_SEED_COMPONENTS = 8  # below FEW_SEED_USERS training seed users
FEW_SEED_USERS = 300
# The width of the user and audience vectors (model.output_dim's role) below FEW_SEED_USERS. The
# linear head scores a^T W x; Adam moves every coordinate of W and a by about lr a step, so the
# part of the update that agrees across W's rows (the seed's signal) moves the score direction
# W^T a in proportion to the width, the noise, which does not agree, in proportion to its square
# root. Measured at 150 seed users, epsilon 1, every run over the utility benchmark's 3 splits
# (docs/utility.md): 256 against 32 gained 4-9% on Adult, Caravan, Telco and census_married, tied
# Fertility and lost 4% on census (1.2 standard errors); 64-1,024 did about as well as 256 on
# Caravan and Telco, 4 and 4,096 worse. At 600 training seed users (16 components) it was even,
# so the 16-component tier keeps the default.
FEW_SEED_WIDTH = 256
SMALL_SEED_FITS = ("seed_mean", "dp_sgd")
SMALL_SEED_COMPONENTS = 16  # from FEW_SEED_USERS up to MANY_SEED_USERS
# The seed mean's fit (training/seed_mean_fit.py) affords more components as the seed grows: its
# noise on each component is fixed, its signal grows with the seed. At 2,000 and 4,000 training
# seed users 64 components beat DP-SGD's tower by 1-11% on every table where the rule applied (16
# lost to it at 2,000 on census, 32 tied it); DP-SGD's fit of the small model stops the rule at
# MANY_SEED_USERS, where 16 components tied the tower.
MANY_SEED_USERS = 1500
MANY_SEED_COMPONENTS = 64  # from MANY_SEED_USERS up to model.small_seed_users, the seed mean's only: the widest the rule fits


def small_seed_components(seed_users: float) -> int:
    """The projection width the small-seed rule gives a run with this many training seed users (a DP estimate)."""
    if seed_users < FEW_SEED_USERS:
        return FEW_SEED_COMPONENTS
    return SMALL_SEED_COMPONENTS if seed_users < MANY_SEED_USERS else MANY_SEED_COMPONENTS


def small_seed_width(seed_users: float, configured: int) -> int:
    """The small-seed rule's model.output_dim: FEW_SEED_WIDTH in the 8-component tier, else as configured."""
    return FEW_SEED_WIDTH if seed_users < FEW_SEED_USERS else configured


def _builtin_tower() -> dict[str, Any]:
    return {"_target_": None}


def tower_target(user_tower: dict[str, Any] | None) -> str | None:
    """``model.user_tower._target_``, or None for the built-in tower."""
    return None if not user_tower else user_tower.get("_target_")


@dataclass
class ModelConfig:
    kind: str = "two_tower"  # a name in model/registry.py: two_tower, logistic or centroid
    embedding_dim: int = 16  # width of each categorical and list-value embedding
    hidden_dims: list[int] = field(default_factory=lambda: [64])  # the user tower's hidden layers (ReLU); []: a linear tower
    output_dim: int = 32  # width of the user and audience vectors
    similarity: str = "cosine"  # cosine (with a learned scale) or dot
    dropout: float = 0.0  # after each hidden layer; 0: none
    # k: the user tower reads the top-k principal components of the publisher's encoded features
    # (fixed, no epsilon; data/principal_inputs.py) instead of embeddings. For small seeds.
    input_projection: Optional[int] = None
    # The small-seed rule (training/model_rule.py): a DP run with fewer training seed users than
    # this (a DP estimate) takes a projection (small_seed_components), no hidden layer, dot similarity. null: off.
    small_seed_users: Optional[int] = 4500
    # How the small-seed model is fitted: seed_mean (one Gaussian release of the seed's summed
    # components, training/seed_mean_fit.py) or dp_sgd, for which the rule ends at MANY_SEED_USERS.
    # Torchrun, the audit, a resume and tuning's trials train with DP-SGD.
    small_seed_fit: str = "seed_mean"
    # Your own user tower (model/custom.py): _target_ and its keyword arguments. _target_ null: the
    # built-in tower (embeddings and hidden_dims above).
    user_tower: Optional[dict[str, Any]] = field(default_factory=_builtin_tower)

    @property
    def custom_tower(self) -> str | None:
        """``user_tower._target_``: None for the built-in tower."""
        return tower_target(self.user_tower)

    def check(self) -> None:
        one_of("model.similarity", self.similarity, ("dot", "cosine"))
        whole("model.embedding_dim", self.embedding_dim)
        whole("model.output_dim", self.output_dim)
        for width in self.hidden_dims:
            whole("model.hidden_dims", width)
        require("model.dropout", self.dropout, lambda v: 0 <= v < 1, "must be in [0, 1)")
        if self.input_projection is not None:
            whole("model.input_projection", self.input_projection, low=1, high=256)
            if self.kind != "two_tower":
                raise ConfigError("model.input_projection", f"projects the two-tower model's inputs; model.kind is {self.kind}: set it to null")
        if self.small_seed_users is not None:
            whole("model.small_seed_users", self.small_seed_users)
        one_of("model.small_seed_fit", self.small_seed_fit, SMALL_SEED_FITS)
        self._check_user_tower()

    def _check_user_tower(self) -> None:
        tower, target = self.user_tower or {}, self.custom_tower
        if target is None:
            if set(tower) - {"_target_"}:
                raise ConfigError("model.user_tower", f"has arguments ({', '.join(sorted(set(tower) - {'_target_'}))}) but no _target_")
            return
        parts = target.split(".") if isinstance(target, str) else []
        if len(parts) < 2 or not all(p.isidentifier() for p in parts):
            raise ConfigError("model.user_tower._target_", f"'{target}' is not a dotted path to a class, e.g. my_pkg.towers.CrossTower")
        given = [key for key in ("spec", "output_dim") if key in tower]
        if given:
            raise ConfigError(f"model.user_tower.{given[0]}", "is given by the package (the feature spec, model.output_dim): remove it")
        if self.kind != "two_tower":
            raise ConfigError("model.user_tower", f"replaces the two-tower model's user tower; model.kind is {self.kind}: set model.kind=two_tower")
        if self.input_projection is not None:
            raise ConfigError("model.input_projection", "projects the built-in user tower's inputs; model.user_tower is set: set it to null")

    def to_dict(self) -> dict:
        return asdict(self)
