"""``privacy.mechanism=auto``: randomised response on the labels (privacy/label_rr.py) or DP-SGD,
chosen on the run's released DP counts, after its reservation, like every decision that reads
the seed.

Randomised response keeps a seed's signal when many seed users stand out of the flips of
everyone else's labels. With m seed users among the P users it trains on, out of R publisher
users, each label flipped with probability p, the expected excess of flipped-to-1 labels among
the seed is m P / R (1 - 2p), and the binomial noise of the flips over the population is
sqrt(P p (1 - p)); their ratio is the signal this rule reads, for the weakest audience, from the
DP estimate of its matched users. Measured at epsilon 1 on six real tables
(docs/utility.md#randomised-response-on-the-labels): randomised response won where the ratio
was 27-136 (Adult +2%, Fertility +2%, census_married +11% against DP-SGD) and lost where it
was 2-14 (census -3%, Telco -1%, Caravan -43%). ``MIN_SIGNAL`` sits between the two.

The population, the users randomised response would train on, is fixed before any label is
read: every user whose keyed draws fall outside the evaluation and hold-out ranges, up to about
``privacy.label_rr_users`` of them (a rate of the table's public row count).
"""

from __future__ import annotations

import math
from typing import Any

from lookalike.model.registry import model_kind
from lookalike.privacy.label_rr import flip_probability

MIN_SIGNAL = 20.0


def label_rr_blockers(cfg: Any) -> list[tuple[str, str]]:
    """What keeps a run from training by randomised response (one draw of the labels, trained on
    once), as (setting, what randomised response needs of it): ``auto`` takes DP-SGD for such a
    run, an explicit ``label_rr`` is refused on the first (TrainConfig._check_label_rr)."""
    needs = (
        (not model_kind(cfg.model.kind).learned, "model.kind", f"a trained model; model.kind={cfg.model.kind} has its own DP release"),
        (cfg.audit.enabled, "audit.enabled", "false: the canary audit measures DP-SGD's steps"),
        (cfg.tuning.mean_trials is not None, "tuning.mean_trials", "null: private tuning's trials are DP-SGD runs"),
        (cfg.trainer.resume_from is not None, "trainer.resume_from", "null: a resume would draw the labels again; start a fresh run"),
    )
    return [(key, what) for failed, key, what in needs if failed]


def may_use_label_rr(cfg: Any, processes: int) -> bool:
    """Whether this run could train by randomised response: a private, learned, single-process
    fresh run without the audit or private tuning (explicit ``label_rr`` refuses the others)."""
    return bool(cfg.privacy.enabled) and cfg.privacy.mechanism in ("label_rr", "auto") and not label_rr_blockers(cfg) and processes == 1


def population_rate(cfg: Any, table_rows: int | None, processes: int) -> float:
    """The share of the draws' range the population takes: 0 where the run cannot use
    randomised response or the table's size is unknown (None); else every user outside the
    evaluation range, or fewer where the table (``table_rows``, its files' row count: public)
    has more than ``privacy.label_rr_users``."""
    if table_rows is None or not may_use_label_rr(cfg, processes):
        return 0.0
    room = 1.0 - float(cfg.data.eval_negative_rate)
    cap = cfg.privacy.label_rr_users
    if cap is None:
        return room
    return 0.0 if table_rows <= 0 else min(room, float(cap) / table_rows)


def label_rr_signal(seed_users: float, population: int, rows: int, epsilon: float, audiences: int) -> float:
    """How far the seed stands out of the flips: m (P / R) (1 - 2p) / sqrt(P p (1 - p))."""
    if population <= 0 or rows <= 0:
        return 0.0
    p = flip_probability(epsilon, audiences)
    excess = max(0.0, seed_users) * population / rows * (1 - 2 * p)
    noise = math.sqrt(population * p * (1 - p))
    if noise == 0:  # no flips left (an epsilon in the hundreds)
        return math.inf if excess > 0 else 0.0
    return excess / noise


def choose_mechanism(cfg: Any, released_matched: dict[str, int], population: int, rows: int) -> str:
    """dp_sgd or label_rr for this run, from its DP match counts (never the exact ones), the size
    of its population and the publisher's row count (both public)."""
    setting = str(cfg.privacy.mechanism)
    if setting != "auto":
        return setting
    if population <= 0 or not released_matched:
        return "dp_sgd"
    weakest = min(released_matched.values())
    signal = label_rr_signal(weakest, population, rows, float(cfg.privacy.target_epsilon), len(released_matched))
    return "label_rr" if signal >= MIN_SIGNAL else "dp_sgd"
