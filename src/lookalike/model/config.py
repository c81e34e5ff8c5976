"""The ``model`` section: which model kind (``model/registry.py``) and its hyperparameters, logged
with the model so export can rebuild it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from lookalike.errors import ConfigError
from lookalike.settings import one_of, require, whole

SMALL_SEED_COMPONENTS = 16


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
    # this (a DP estimate) takes input_projection=SMALL_SEED_COMPONENTS, no hidden layer, dot similarity. null: off.
    small_seed_users: Optional[int] = 300

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

    def to_dict(self) -> dict:
        return asdict(self)
