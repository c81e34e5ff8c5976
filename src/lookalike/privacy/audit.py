"""One-run privacy audit (Steinke, Nasr and Jagielski, 2023): an empirical lower bound on the
epsilon of the very run that is being trained.

m canary users are blank users (numerics at the mean, categories missing) that differ only by
a token of their own in one categorical feature: whatever separates them is what the model
memorised about that token. Each canary joins the training set as a positive of
the first audience with probability 1/2, independently. After training, the canaries the model
scores highest are guessed "in" and the lowest "out". Under epsilon-DP the number of correct
guesses among r is dominated by Binomial(r, e^eps / (1 + e^eps)); the largest epsilon that this
rejects at 95% confidence is the lower bound. It uses the pure-DP form of the bound: with delta
<= 1e-5 and 1,000 canaries the delta correction (at most m * delta) is below 0.01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lookalike.data.encode import EncodedFeatures
from lookalike.errors import ConfigError
from lookalike.evaluate import score


@dataclass
class Canaries:
    features: EncodedFeatures  # all m canaries
    included: np.ndarray  # bool [m]: trained on as positives of audience 0
    guess_fraction: float
    first_token: int = 0  # vocabulary index of canary 0 in the first categorical feature

    def zero_tokens(self, model: torch.nn.Module) -> None:
        """Start every canary token's embedding at zero, so an untouched (excluded) token stays
        exactly there and a trained one stands out. Which tokens exist is public (all m do,
        included or not), so this choice is data-independent and the DP guarantee covers it."""
        tower = getattr(model, "user_tower", model)
        tables = getattr(tower, "categorical", None)
        # The two-tower shares one table across categoricals (the first column at offset 0);
        # the logistic baseline keeps one table per column.
        table = tables.weight if isinstance(tables, torch.nn.Embedding) else tables[0].weight if tables else None
        if table is not None:
            with torch.no_grad():
                table[self.first_token : self.first_token + len(self.included)] = 0.0

    def training_rows(self, n_audiences: int) -> tuple[EncodedFeatures, np.ndarray]:
        rows = np.flatnonzero(self.included)
        labels = np.zeros((rows.size, n_audiences), dtype=np.float32)
        labels[:, 0] = 1.0
        return self.features.take(rows), labels

    def audit(self, model, device: torch.device, confidence: float = 0.95) -> dict[str, float]:
        scores = score(model, self.features, device)[:, 0]
        k = max(1, int(self.guess_fraction * scores.size))
        order = np.argsort(-scores, kind="stable")
        correct = int(self.included[order[:k]].sum() + (~self.included[order[-k:]]).sum())
        return {"audit.canaries": scores.size, "audit.guesses": 2 * k, "audit.correct": correct,
                "audit.epsilon_lower_bound": epsilon_lower_bound(correct, 2 * k, confidence)}


def plant_canaries(data, count: int, guess_fraction: float, rng: np.random.Generator) -> Canaries:
    """Give ``count`` canaries a token of their own in the first categorical feature."""
    if not data.spec.categorical:
        raise ConfigError("audit", "needs a categorical feature to give each canary a token of its own")
    feature = data.spec.categorical[0]
    first = feature.cardinality  # canary tokens go after the real vocabulary
    feature.vocabulary = list(feature.vocabulary) + [f"__lookalike_canary_{i}" for i in range(count)]
    real = data.train_features
    blank = EncodedFeatures(np.zeros((count, real.numeric.shape[1]), dtype=np.float32),
                            np.zeros((count, real.categorical.shape[1]), dtype=np.int64),
                            [np.zeros((count, m.shape[1]), dtype=np.int64) for m in real.multi])
    blank.categorical[:, 0] = first + np.arange(count)
    return Canaries(blank, rng.random(count) < 0.5, guess_fraction, first)


def binomial_tail(r: int, c: int, p: float) -> float:
    """P[Binomial(r, p) >= c]."""
    if c <= 0:
        return 1.0
    if p >= 1.0:
        return 1.0
    logs = [math.lgamma(r + 1) - math.lgamma(i + 1) - math.lgamma(r - i + 1) + i * math.log(p) + (r - i) * math.log1p(-p)
            for i in range(c, r + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def epsilon_lower_bound(correct: int, guesses: int, confidence: float = 0.95) -> float:
    """Largest epsilon rejected at ``confidence`` given ``correct`` of ``guesses`` right."""
    alpha = 1.0 - confidence

    def tail(eps: float) -> float:
        return binomial_tail(guesses, correct, math.exp(eps) / (1.0 + math.exp(eps)))

    if guesses == 0 or tail(0.0) > alpha:
        return 0.0
    low, high = 0.0, 1.0
    while tail(high) <= alpha and high < 100:
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        if tail(mid) <= alpha:
            low = mid
        else:
            high = mid
    return low
