"""The ``model`` section: which model kind (``model/registry.py``) and its hyperparameters, logged
with the model so export can rebuild it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lookalike.settings import one_of, require, whole


@dataclass
class ModelConfig:
    kind: str = "two_tower"  # a name in model/registry.py: two_tower, logistic or centroid
    embedding_dim: int = 16
    hidden_dims: list[int] = field(default_factory=lambda: [64])
    output_dim: int = 32
    similarity: str = "cosine"
    dropout: float = 0.0

    def check(self) -> None:
        one_of("model.similarity", self.similarity, ("dot", "cosine"))
        whole("model.embedding_dim", self.embedding_dim)
        whole("model.output_dim", self.output_dim)
        for width in self.hidden_dims:
            whole("model.hidden_dims", width)
        require("model.dropout", self.dropout, lambda v: 0 <= v < 1, "must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)
