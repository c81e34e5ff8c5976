"""The one-run audit's (epsilon, delta) bound (Steinke, Nasr and Jagielski, arXiv:2305.08846): fast,
no training. Every test here fails if the delta term is dropped from the bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lookalike.data.encode import EncodedFeatures
from lookalike.privacy.audit_bound import epsilon_lower_bound
from lookalike.training.canaries import Canaries

ALPHA = 0.05


def pure_bound(correct: int, guesses: int) -> float:
    return epsilon_lower_bound(correct, guesses, 1000, 0.0)


def test_delta_zero_is_the_pure_dp_bound_and_any_delta_lowers_it():
    # All 200 right: P[Binomial(200, p) >= 200] = p^200 = 0.05 at p = 0.05^(1/200).
    p = 0.05 ** (1 / 200)
    assert pure_bound(200, 200) == pytest.approx(math.log(p / (1 - p)), rel=1e-9)  # 4.19363
    assert pure_bound(100, 200) == 0.0
    assert epsilon_lower_bound(200, 200, 1000, 1e-5) < pure_bound(200, 200) - 0.02  # 4.16649


def test_the_audit_finding_small_training_sets_have_a_large_delta():
    pure = pure_bound(180, 200)
    assert pure == pytest.approx(1.798865, abs=1e-5) and pure > 1.5
    # N = 729: delta = 1/(10 N), 2 m delta = 0.274. The delta term costs 0.04 here, not nothing:
    # max_i P[180 - i <= Binomial(200, q) < 180] / i is about 0.06 near the crossing, not 1.
    at_729 = epsilon_lower_bound(180, 200, 1000, 1 / (10 * 729))
    assert at_729 == pytest.approx(1.760601, abs=1e-5) and at_729 < pure - 0.03
    # N = 40: delta = 0.0025 pushes even eps = 0 to p = 2 m delta * 0.01045 = 0.052 > alpha, so no
    # epsilon is rejected and there is no valid 95% bound at all.
    assert epsilon_lower_bound(180, 200, 1000, 1 / (10 * 40)) == 0.0


def test_small_delta_costs_little_and_the_bound_never_grows_with_delta():
    pure = pure_bound(180, 200)
    tiny = epsilon_lower_bound(180, 200, 1000, 1e-7)
    assert pure - 1e-4 < tiny < pure  # 1.798840 against 1.798865
    deltas = [0.0, 1e-9, 1e-7, 1e-5, 1e-4, 1 / 7290, 1e-3, 2e-3, 3e-3, 1e-2]
    bounds = [epsilon_lower_bound(180, 200, 1000, d) for d in deltas]
    assert all(later <= earlier for earlier, later in zip(bounds, bounds[1:]))
    assert bounds[0] > bounds[4] > bounds[6] > bounds[7] > 0.0 == bounds[-1]


def test_values_printed_in_the_paper():
    # (m, r, v, delta) -> eps at 95%: the Appendix D example and a Section 7 point of
    # arXiv:2305.08846v1, as quoted by a public port of that appendix (not read from the PDF here).
    assert epsilon_lower_bound(75, 100, 1000, 1e-4) == pytest.approx(0.673, abs=5e-4)
    assert epsilon_lower_bound(1439, 1510, 100_000, 1e-5) == pytest.approx(2.675, abs=1e-3)


def paper_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The paper's inequality, written out independently: f(u) = P[Binomial(r, q) >= u] from exact
    binomial coefficients, P[W >= v] <= f(v) + 2 m delta max_{i >= 1} (f(v - i) - f(v)) / i."""
    q = math.exp(eps) / (1 + math.exp(eps))

    def f(u: int) -> float:
        return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(max(u, 0), r + 1))

    steepest = max(((f(v - i) - f(v)) / i for i in range(1, m + 1)), default=0.0)
    return min(1.0, f(v) + 2 * m * delta * steepest)


@pytest.mark.parametrize("m, r, v, delta", [(10, 10, 10, 1e-3), (12, 10, 9, 1e-3), (20, 16, 15, 2e-3), (30, 20, 18, 1e-4), (8, 8, 8, 0.01), (10, 10, 10, 0.02)])
def test_the_bound_is_where_the_papers_inequality_crosses_alpha(m, r, v, delta):
    eps = epsilon_lower_bound(v, r, m, delta)
    if eps == 0.0:
        assert paper_p_value(m, r, v, 0.0, delta) > ALPHA
    else:
        # (up to rounding in the last bits of the two sums at the crossing)
        assert paper_p_value(m, r, v, eps, delta) <= ALPHA + 1e-12 < paper_p_value(m, r, v, eps + 0.01, delta)
    assert eps < epsilon_lower_bound(v, r, m, 0.0)


def test_a_delta_dp_mechanism_is_not_over_reported_more_than_alpha_of_the_time():
    # Each of m = 100 canaries is revealed with probability delta = 0.01 and otherwise hidden by a
    # fair coin: (0, 0.01)-DP. Guessing all 100, each is right with probability 0.505, exactly.
    m, delta, c = 100, 0.01, 0.505
    pmf = [math.comb(m, v) * c**v * (1 - c) ** (m - v) for v in range(m + 1)]
    # P[the bound claims more than the true epsilon 0]
    aware = sum(pmf[v] for v in range(m + 1) if epsilon_lower_bound(v, m, m, delta) > 0.0)
    ignored = sum(pmf[v] for v in range(m + 1) if epsilon_lower_bound(v, m, m, 0.0) > 0.0)
    assert aware <= ALPHA < ignored  # about 1e-12 against 0.0545
    assert epsilon_lower_bound(m, m, m, delta) > 0.5  # and the bound is not trivially zero


class _Memorised(torch.nn.Module):
    """Scores a canary 1 if it was trained on, else 0: a model that memorised every token."""

    def __init__(self, included: np.ndarray):
        super().__init__()
        self.register_buffer("seen", torch.tensor(included, dtype=torch.float32))

    def forward(self, numeric, categorical, *multi):
        return self.seen[categorical[:, 0]].unsqueeze(1)


def test_canaries_audit_passes_m_and_delta_through():
    m = 200
    included = np.random.default_rng(0).random(m) < 0.5
    features = EncodedFeatures(np.zeros((m, 1), dtype=np.float32), np.arange(m, dtype=np.int64)[:, None], [])
    found = Canaries(features, included, 0.1).audit(_Memorised(included), torch.device("cpu"), delta=1e-3)
    assert found["audit.canaries"] == m and found["audit.guesses"] == 40 and found["audit.correct"] == 40
    assert found["audit.delta"] == 1e-3
    assert found["audit.epsilon_lower_bound"] == epsilon_lower_bound(40, 40, m, 1e-3)
    assert 0.0 < found["audit.epsilon_lower_bound"] < epsilon_lower_bound(40, 40, m, 0.0) - 0.1


def test_the_sample_rate_counts_canaries_by_m_alone_not_by_which_are_in():
    """Which canaries are in is the audit's secret: the rows the sample rate counts for them (one
    launch on one process and one under torchrun must sample at the same rate) depend on m only."""
    m = 200
    features = EncodedFeatures(np.zeros((m, 1), dtype=np.float32), np.arange(m, dtype=np.int64)[:, None], [])
    draws = [np.zeros(m, dtype=bool), np.ones(m, dtype=bool)] + [np.random.default_rng(s).random(m) < 0.5 for s in range(5)]
    planted = {Canaries(features, included, 0.1).planted for included in draws}
    assert planted == {m + m // 2}  # the decoys and the expected included canaries
    rows, _ = Canaries(features, draws[2], 0.1).training_rows(2)
    assert abs(rows.numeric.shape[0] - (m + m // 2)) <= 3 * math.sqrt(m) / 2  # the realised rows: about that many
