"""Opacus' RDP and PRV accountants, with the work that repeats between epochs done once.

A run asks its accountant for epsilon at every epoch end, with a history that is one
(noise multiplier, sample rate, steps) entry whose step count grows. Most of Opacus' time goes to
the per-step RDP of the subsampled Gaussian at each of ~60 orders (a series per order), which
depends on (q, sigma) alone: RDP after k steps is k times it. Opacus computes it again on every
call, and the PRV accountant twice per call (its safe domain asks an RDP accountant for k steps,
then for one). Here it is computed once per (q, sigma, orders) and multiplied by the step count:
the same numpy arithmetic, so the same floats, and so the same epsilon to the last bit
(tests/test_accounting.py checks it against Opacus' own accountants). The PRV accountant also
remembers its last answer, so the run's final epsilon, asked right after the last epoch's, is
not computed twice.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import Domain


@functools.lru_cache(maxsize=1024)
def _step_rdp(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    # One step's RDP at each order, as Opacus' compute_rdp builds it before scaling by steps.
    rdp = np.array([rdp_analysis._compute_rdp(q, sigma, order) for order in orders])
    rdp.flags.writeable = False  # shared by every caller of the cache
    return rdp


def compute_rdp(q: float, noise_multiplier: float, steps: int, orders: Sequence[float]) -> np.ndarray:
    """``opacus.accountants.analysis.rdp.compute_rdp`` for a list of orders, cached over steps."""
    return _step_rdp(q, noise_multiplier, tuple(orders)) * steps


class CachedRDPAccountant(RDPAccountant):
    def get_privacy_spent(self, *, delta: float, alphas=None) -> tuple[float, float]:
        if not self.history:
            return 0, 0
        alphas = self.DEFAULT_ALPHAS if alphas is None else alphas
        rdp = sum([compute_rdp(q, sigma, steps, alphas) for sigma, q, steps in self.history])
        eps, best_alpha = rdp_analysis.get_privacy_spent(orders=alphas, rdp=rdp, delta=delta)
        return float(eps), float(best_alpha)


class CachedPRVAccountant(PRVAccountant):
    _last: tuple | None = None  # (the question, its answer)

    def get_epsilon(self, delta: float, *, eps_error: float = 0.01, delta_error: float | None = None, **kwargs) -> float:
        question = (tuple(self.history), delta, eps_error, delta_error)
        if self._last is None or self._last[0] != question:
            self._last = (question, super().get_epsilon(delta, eps_error=eps_error, delta_error=delta_error, **kwargs))
        return self._last[1]

    def _get_domain(self, prvs, num_self_compositions: list[int], eps_error: float, delta_error: float) -> Domain:
        # Opacus' PRVAccountant._get_domain and compute_safe_domain_size (remark 5.6 of Gopi et
        # al.), line for line, with the RDP accountants above.
        total = sum(num_self_compositions)
        rdp = CachedRDPAccountant()
        rdp.history = [(prv.noise_multiplier, prv.sample_rate, steps) for prv, steps in zip(prvs, num_self_compositions)]
        l_max = rdp.get_epsilon(delta_error / 4)
        for prv in prvs:
            one = CachedRDPAccountant()
            one.history = [(prv.noise_multiplier, prv.sample_rate, 1)]
            l_max = max(l_max, one.get_epsilon(delta=delta_error / (8 * total)))
        size = max(l_max, eps_error) + 3
        mesh_size = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
        return Domain.create_aligned(-size, size, mesh_size)


def create_accountant(mechanism: str) -> IAccountant:
    """``opacus.accountants.create_accountant`` for 'rdp' and 'prv', with the caches above."""
    kinds: dict[str, type[IAccountant]] = {"rdp": CachedRDPAccountant, "prv": CachedPRVAccountant}
    if mechanism not in kinds:
        raise ValueError(f"unexpected accounting mechanism: {mechanism}")
    return kinds[mechanism]()
