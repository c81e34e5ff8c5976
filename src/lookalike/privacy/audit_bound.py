"""The one-run audit's statistics (Steinke, Nasr and Jagielski, NeurIPS 2023, Appendix D): the
p-value of a number of correct guesses under (epsilon, delta)-DP and the epsilon lower bound it
implies. The canaries themselves are planted by training (``lookalike.training.canaries``)."""

from __future__ import annotations

import math


def binomial_tail(r: int, c: int, p: float) -> float:
    """P[Binomial(r, p) >= c]."""
    if c <= 0:
        return 1.0
    if p >= 1.0:
        return 1.0
    logs = [math.lgamma(r + 1) - math.lgamma(i + 1) - math.lgamma(r - i + 1) + i * math.log(p) + (r - i) * math.log1p(-p) for i in range(c, r + 1)]
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
