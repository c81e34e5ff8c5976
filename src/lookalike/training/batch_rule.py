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
trained 10 steps and our own model's lift there moved by 30% between splits)."""

from __future__ import annotations

import logging

from lookalike.privacy.accounting import sample_rate_for_noise

log = logging.getLogger(__name__)
NON_PRIVATE_BATCH = 128
MIN_BATCH = 16  # below this the per-step batch is mostly noise whatever the rate
MIN_STEPS = 100


def logical_batch_size(cfg, examples: int, delta: float) -> int:
    """``trainer.batch_size``, or the rule's batch for ``examples`` (the DP estimate) when null."""
    trainer, privacy = cfg.trainer, cfg.privacy
    if trainer.batch_size is not None:
        return int(trainer.batch_size)
    if not privacy.enabled:
        return NON_PRIVATE_BATCH
    epochs = int(trainer.epochs)
    q = min(sample_rate_for_noise(trainer.batch_rule_noise, float(privacy.target_epsilon), delta, epochs, privacy.accountant), epochs / MIN_STEPS)
    batch = max(MIN_BATCH, round(q * examples))
    log.info(
        "batch rule: q %.4g at noise multiplier %g for %d epochs -> logical batch %d of about %d examples",
        q,
        trainer.batch_rule_noise,
        trainer.epochs,
        batch,
        examples,
    )
    return batch
