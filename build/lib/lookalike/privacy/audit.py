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

import math
from dataclasses import dataclass

import numpy as np
import torch

from lookalike.data.encode import EncodedFeatures, concat
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
        """Training rows the audit adds (counted exactly in the sample rate: nothing seed-derived)."""
        return int(self.included.sum()) + self.included.size

    def audit(self, model, device: torch.device, delta: float, confidence: float = 0.95) -> dict[str, float]:
        """Guess the top and bottom ``guess_fraction`` of canaries by score as in and out, and bound
        the epsilon of an (epsilon, ``delta``)-DP run from the number of right guesses."""
        scores = score(model, self.features, device)[:, 0]
        m = scores.size
        # At most m // 2 each way: a canary guessed both in and out is not a guess the bound allows.
        k = min(max(1, int(self.guess_fraction * m)), m // 2)
        order = np.argsort(-scores, kind="stable")
        correct = int(self.included[order[:k]].sum() + (~self.included[order[m - k:]]).sum())
        return {"audit.canaries": m, "audit.guesses": 2 * k, "audit.correct": correct, "audit.delta": delta,
                "audit.epsilon_lower_bound": epsilon_lower_bound(correct, 2 * k, m, delta, confidence)}


def plant_canaries(data, count: int, guess_fraction: float, rng: np.random.Generator) -> Canaries:
    """Give ``count`` canaries a token of their own in the first categorical feature."""
    if not data.spec.categorical:
        raise ConfigError("audit", "needs a categorical feature to give each canary a token of its own")
    feature = data.spec.categorical[0]
    first = feature.cardinality  # canary tokens go after the real vocabulary
    feature.vocabulary = list(feature.vocabulary) + [f"__lookalike_canary_{i}" for i in range(count)] + [
        f"__lookalike_decoy_{i}" for i in range(count)]
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


def p_value(correct: int, guesses: int, canaries: int, eps: float, delta: float) -> float:
    """Upper bound on P[``correct`` or more of ``guesses`` right] in a run that is (eps, delta)-DP
    with respect to each of ``canaries`` canaries, each included with probability 1/2 (Steinke,
    Nasr and Jagielski's approximate-DP bound; ``p_value_DP_audit`` in their Appendix D).

    With v = correct, r = guesses, m = canaries, q = e^eps / (1 + e^eps) and f(u) = P[Binomial(r, q)
    >= u]: P[W >= v] <= f(v) + 2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) / i. Larger i add
    nothing: f(v - i) = 1 there, so the ratio only shrinks. With delta = 0 this is f(v)."""
    q = math.exp(eps) / (1.0 + math.exp(eps))  # the accuracy of eps-DP randomized response
    tail = binomial_tail(guesses, correct, q)
    if delta == 0.0 or tail >= 1.0:
        return tail
    # f(v - i) - f(v) = P[v - i <= Binomial(r, q) < v]: walk k = v - 1, v - 2, ..., 0 adding pmf(k).
    log_q, log_not_q, log_r = math.log(q), math.log1p(-q), math.lgamma(guesses + 1)
    window = steepest = 0.0
    for i in range(1, correct + 1):
        k = correct - i
        log_pmf = log_r - math.lgamma(k + 1) - math.lgamma(guesses - k + 1) + k * log_q + (guesses - k) * log_not_q
        window += math.exp(log_pmf)
        steepest = max(steepest, window / i)
    return min(1.0, tail + 2.0 * canaries * delta * steepest)


def epsilon_lower_bound(correct: int, guesses: int, canaries: int, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon for which (epsilon, ``delta``)-DP is rejected at ``confidence``, given
    ``correct`` of ``guesses`` right among ``canaries`` canaries (guessed or not); 0.0 when no
    epsilon >= 0 is rejected, as when chance accuracy or a large ``delta`` explains the guesses."""
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    alpha = 1.0 - confidence

    def tail(eps: float) -> float:
        return p_value(correct, guesses, canaries, eps, delta)

    # Like the paper's get_eps_audit, this takes the rejected epsilons to be an interval [0, bound).
    # The delta term can make the p-value dip as eps grows, but only where it is above alpha
    # (checked on an eps grid over [0, 10] for alpha 0.01, 0.05, 0.1, every v <= r <= 400 and
    # 2 m delta up to 20), so eps = 0 not rejected means none is.
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
