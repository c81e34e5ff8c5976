"""The logical batch size when ``trainer.batch_size`` is null: a rule from the training-set size
and the privacy target, so that no table needs hand-tuning.

Under DP-SGD at a fixed number of passes E, the noise on the averaged gradient is sigma C / (q N):
for small q the accountant's epsilon grows about as sqrt(E q) / sigma, so the budget fixes sigma / q
and with it that noise, whatever the batch. What the batch does change is the noise multiplier:
a tiny batch (small q) runs at a tiny sigma, where Poisson subsampling amplifies privacy poorly
and the accountant charges more; a batch that is a large share of the data (q near 1) gets no
amplification at all (a 1,000-example table at batch 512 trained 15 steps at sigma 5). The rule
aims at the regime between: the largest q at which E passes cost exactly the target epsilon with
noise multiplier ``trainer.batch_rule_noise`` (2 by default, what the Adult and census runs that
kept 96% of the non-private lift ran at), and batch = q N. At epsilon 1 every DP run therefore
takes about the same number of steps (E / q: 110-170), its batch growing with its data. A large
epsilon would let that rate reach a few dozen steps in all; the rate is capped so that a run takes
at least ``MIN_STEPS`` (the noise multiplier then falls below the aim, which a large budget
affords). A small epsilon gets more steps at the same noise: 1,360 at epsilon 0.3.

N is the run's DP estimate of the training-set size (privacy/size_release.py) and epsilon, delta
and E are settings: the rule reads nothing about the seed beyond that released estimate.
A non-private run has no noise to aim at; it uses ``NON_PRIVATE_BATCH``, small enough that the
epochs are a few hundred steps even on a table of a thousand examples (at 512, Caravan's 1,000
trained 10 steps and our own model's lift there moved by 30% between splits).

Epochs (``trainer.epochs`` null) follow the same estimate. At a fixed epsilon and noise multiplier
q E is about constant, so the rule's batch grows with N: 2,807 on a 95,000-example training set at
epsilon 1, where 170 steps took 5 epochs. There, 20 epochs (q 0.0084, about 2,400 steps of about
800) kept lift@20% 2.30 against 2.08 at 5 (our own non-private model: 2.35), 40 epochs 2.22, and
20 epochs at noise multiplier 4 (540 steps of 3,500) 2.07: more, smaller steps at the same
noise-to-signal ratio (sigma over the batch), as Sander et al.'s "TAN without a burn" (ICML 2023)
predicts. So a DP run whose 5-epoch batch would pass ``trainer.batch_rule_max`` (1,024) takes
ceil(5 B / 1,024) epochs instead, up to ``MAX_EPOCHS``, and the batch of that many: its compute
grows with N. (Not where the rate is held to ``MIN_STEPS``, a large epsilon: there more epochs
would mean a larger batch.) Below that the rule leaves 5: on the benchmark's full seeds (batches 454 to 1,087),
15 epochs lost 0.5-1.2% of lift. An explicit ``trainer.epochs`` is used as given.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from lookalike.privacy.accounting import sample_rate_for_noise

log = logging.getLogger(__name__)
NON_PRIVATE_BATCH = 128
MIN_BATCH = 16  # below this the per-step batch is mostly noise whatever the rate
MIN_STEPS = 100
BASE_EPOCHS = 5
MAX_EPOCHS = 20


@dataclass(frozen=True)
class BatchPlan:
    epochs: int
    batch: int  # the expected logical batch


def batch_plan(cfg, examples: int, delta: float) -> BatchPlan:
    """The run's epochs and logical batch: the settings, or the rules above for what is null.
    ``examples`` is the DP estimate of the training set (exact only for trusted callers)."""
    trainer, privacy = cfg.trainer, cfg.privacy
    epochs = int(trainer.epochs) if trainer.epochs is not None else BASE_EPOCHS
    if trainer.batch_size is not None:
        return BatchPlan(epochs, int(trainer.batch_size))
    if not privacy.enabled:
        return BatchPlan(epochs, NON_PRIVATE_BATCH)
    batch = _rule_batch(cfg, examples, delta, epochs)
    if trainer.epochs is None and batch > trainer.batch_rule_max:
        more = min(MAX_EPOCHS, math.ceil(epochs * batch / trainer.batch_rule_max))
        smaller = _rule_batch(cfg, examples, delta, more)
        # Where the rate is held to MIN_STEPS (a large epsilon), more epochs mean a larger batch.
        if smaller < batch:
            log.info("epoch rule: a %d-example batch at %d epochs is above trainer.batch_rule_max (%d): %d epochs", batch, epochs, trainer.batch_rule_max, more)
            epochs, batch = more, smaller
    return BatchPlan(epochs, batch)


def _rule_batch(cfg, examples: int, delta: float, epochs: int) -> int:
    trainer, privacy = cfg.trainer, cfg.privacy
    q = min(sample_rate_for_noise(trainer.batch_rule_noise, float(privacy.target_epsilon), delta, epochs, privacy.accountant), epochs / MIN_STEPS)
    batch = max(MIN_BATCH, round(q * examples))
    log.info(
        "batch rule: q %.4g at noise multiplier %g for %d epochs -> logical batch %d of about %d examples",
        q,
        trainer.batch_rule_noise,
        epochs,
        batch,
        examples,
    )
    return batch
