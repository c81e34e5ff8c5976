"""One-run privacy audit (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023, arXiv:2305.08846): an empirical lower bound on the epsilon of the very run that
is being trained.

m canary users are blank users (numerics at the mean, categories missing) that differ only by
a token of their own in one categorical feature: whatever separates them is what the model
memorised about that token. Each canary joins the training set as a positive of
the first audience with probability 1/2, independently. After training, the canaries the model
scores highest are guessed "in" and the lowest "out". The bound is the paper's (epsilon, delta)
one, computed as in their Appendix D (``p_value_DP_audit``): under (eps, delta)-DP, v or more
correct among r guesses has probability at most f(v) + 2 m delta max_i (f(v - i) - f(v)) / i, with
f the Binomial(r, e^eps / (1 + e^eps)) upper tail. The largest epsilon this rejects at 95%
confidence is the lower bound, and 0 when delta is so large that no epsilon is rejected. The delta
term is not negligible: it scales with m delta, and delta = 1/(10 N) is large for small N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lookalike.data.encode import EncodedFeatures, concat
from lookalike.errors import ConfigError
from lookalike.model.scoring import score
from lookalike.privacy.audit_bound import epsilon_lower_bound


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
                table[self.first_token : self.first_token + 2 * len(self.included)] = 0.0  # canaries and decoys

    def training_rows(self, n_audiences: int) -> tuple[EncodedFeatures, np.ndarray]:
        """The included canaries as positives of audience 0, and as many decoys as background
        (target 0): blank users with a token of their own from a second block, always trained
        on. Without decoys, "blank" alone would predict the seed (every blank user trained on
        would be a positive) and every canary would score high, included or not. With them,
        only a canary's own token can lift it above the excluded ones. The decoys are synthetic
        and always there: they cost no privacy."""
        rows = np.flatnonzero(self.included)
        m = self.included.size
        labels = np.zeros((rows.size + m, n_audiences), dtype=np.float32)
        labels[: rows.size, 0] = 1.0
        decoys = self.features.take(np.arange(m))
        decoys.categorical[:, 0] += m  # tokens first + m .. first + 2m - 1
        return concat(self.features.take(rows), decoys), labels

    @property
    def planted(self) -> int:
        """Training rows the audit adds, as the sample rate counts them: the m decoys plus the
        expected number of included canaries, m // 2. A function of m alone, never of which
        canaries were drawn in: those draws are the audit's secret, and counting them exactly
        would release their sum through the logged sample rate and steps, and make two launches
        of one config (one process, torchrun) sample at different rates whenever the estimate
        plus a Binomial(m, 1/2) straddles a multiple of the batch size. The realised rows
        differ from this by about sqrt(m) / 2: the batch is that much off trainer.batch_size, and
        Poisson sampling at the fixed rate is accounted the same."""
        m = self.included.size
        return m + m // 2

    def audit(self, model, device: torch.device, delta: float, confidence: float = 0.95) -> dict[str, float]:
        """Guess the top and bottom ``guess_fraction`` of canaries by score as in and out, and bound
        the epsilon of an (epsilon, ``delta``)-DP run from the number of right guesses."""
        scores = score(model, self.features, device)[:, 0]
        m = scores.size
        # At most m // 2 each way: a canary guessed both in and out is not a guess the bound allows.
        k = min(max(1, int(self.guess_fraction * m)), m // 2)
        order = np.argsort(-scores, kind="stable")
        correct = int(self.included[order[:k]].sum() + (~self.included[order[m - k :]]).sum())
        return {
            "audit.canaries": m,
            "audit.guesses": 2 * k,
            "audit.correct": correct,
            "audit.delta": delta,
            "audit.epsilon_lower_bound": epsilon_lower_bound(correct, 2 * k, m, delta, confidence),
        }


def plant_canaries(data, count: int, guess_fraction: float, rng: np.random.Generator) -> Canaries:
    """Give ``count`` canaries a token of their own in the first categorical feature."""
    if not data.spec.categorical:
        raise ConfigError("audit", "needs a categorical feature to give each canary a token of its own")
    feature = data.spec.categorical[0]
    first = feature.cardinality  # canary tokens go after the real vocabulary
    feature.vocabulary = list(feature.vocabulary) + [f"__lookalike_canary_{i}" for i in range(count)] + [f"__lookalike_decoy_{i}" for i in range(count)]
    real = data.train_features
    blank = EncodedFeatures(
        np.zeros((count, real.numeric.shape[1]), dtype=np.float32),
        np.zeros((count, real.categorical.shape[1]), dtype=np.int64),
        [np.zeros((count, m.shape[1]), dtype=np.int64) for m in real.multi],
    )
    blank.categorical[:, 0] = first + np.arange(count)
    return Canaries(blank, rng.random(count) < 0.5, guess_fraction, first)
