"""The small-seed rule: which two-tower model a run trains, from the DP estimate of its seed size.

Under DP-SGD every trainable weight takes Gaussian noise at every step, while the signal grows
with the number of seed users. With a seed of a few hundred users the default tower (embeddings,
a hidden layer: thousands of weights) drowns in that noise; a linear head on the publisher's
whitened principal components (``model.input_projection``, fitted without the seed) has a few
hundred weights and keeps far more of it. How many components: 8 below 300 training seed users,
16 from there up to ``model.small_seed_users`` (``small_seed_components`` in model/config.py);
below 300 the head's vectors are 256 wide, not ``model.output_dim`` (``FEW_SEED_WIDTH``: with
Adam a wider linear head averages the noise out of its score, model/config.py says how).
Measured at epsilon 1 with 3 repeats each (lift@20%, benchmarks/utility.py, docs/utility.md):
at 150 seed users 8 components did best (4 about as well, 12, 16 and 32 worse); with 8, at 240
training seed users the small model gained 6-13% over the tower on four of five tables, at 400
2-12% on four (telco even), at 600 the two were within 1.5% but on census_married (+3%). 16
components against 8: at 240 training seed users 5% worse on telco and Fertility, even on Adult
and census, 7% better on census_married; at 400 better by 2-3% on Adult, census and
census_married, 1% worse on telco (hence 300, between the two). With 16
at 600 (seeds of 750) it gained 2% on Adult, census and telco and 16% on census_married, and lost
3% on Fertility; at 729 (telco's full seed) 5%; at 1,200 it was even (Adult and census_married
+2-4%, census and Fertility -1-4%), and at 2,400 the tower won on all four (-1% to -5%). So
the rule ran up to 1,000 training seed users. Fitted by the seed mean (below), 16 components gained
2-13% over the tower at 1,200 on three of four tables (census even) and 64 components 1-11% at
2,000 and 4,000 on every table the rule reached: that fit's rule runs up to 4,500 with 64 from
1,500 (MANY_SEED_USERS), DP-SGD's up to 1,500. The synthetic data the tests train on has seeds
of a few hundred users and exercises the configured tower (``debug=default`` turns the rule
off); ``make demo``'s seeds are thousands of users, far above it.

How the small model is fitted is ``model.small_seed_fit``: ``seed_mean`` (the default), one
Gaussian release of each seed's summed components (training/seed_mean_fit.py), which kept 1-15%
more lift than DP-SGD on every table at 150 and 750 seed users and on Caravan's and Telco's full
seeds (docs/utility.md, "The small-seed fit"); ``dp_sgd`` trains it as measured above.

The rule is for DP runs: a non-private run has no noise to shrink the model for and trains the
model as configured. Private tuning can choose between the two on the table at hand
(``+tuning.space.model.small_seed_users=[null,100000]``), but at epsilon 1 its search cost more
lift than the choice gained (docs/utility.md, "Private tuning, measured").

The seed size is never read exactly: the estimate is a post-processing of the run's DP estimate
N-hat of the training-set size (privacy/size_release.py) and public numbers. The negatives are
the users whose keyed draw falls in a range (data/matching.py), less the held-out seed users; B,
the publisher users in that range, is a function of the ids and the split seed only. With
h = holdout_fraction and r = negative_rate, N = s (1 - h) + B - r h s, hence
s (1 - h) = (N - B) (1 - h) / (1 - h - r h): the training seed users. (Subtracting r P from N
instead would add the binomial spread of the draws, about 80 users on Adult, to the DP noise.)
A tower of your own (``model.user_tower``) is never replaced: the rule only swaps the built-in one.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from lookalike.model.config import MANY_SEED_USERS, ModelConfig, small_seed_components, small_seed_width

log = logging.getLogger(__name__)


def seed_users_estimate(examples: float, in_background_range: int, negative_rate: float, holdout_fraction: float) -> float:
    """Training seed users implied by ``examples`` training examples (see the module doc)."""
    h = holdout_fraction
    return max(0.0, (examples - in_background_range) * (1 - h) / (1 - h - negative_rate * h))


def model_for_seed(model: ModelConfig, seed_users: float | None, components: int | None, by_mean: bool = False) -> ModelConfig:
    """``model``, or its small-seed form when the rule applies: a two-tower model whose settings
    do not already fix the projection, a projection fitted for it (``components`` wide:
    MANY_SEED_COMPONENTS, or the encoded width when narrower), and fewer seed users than
    ``model.small_seed_users`` (``by_mean``: the run fits it by the seed mean, training/seed_mean_fit.py;
    otherwise DP-SGD, and the rule ends at MANY_SEED_USERS). It reads the leading
    small_seed_components(seed_users) of them."""
    if model.kind != "two_tower" or model.input_projection is not None or model.small_seed_users is None or seed_users is None:
        return model
    # DP-SGD's fit of the small model (by_mean False) ties the tower at MANY_SEED_USERS: the rule ends there.
    if seed_users >= (model.small_seed_users if by_mean else min(model.small_seed_users, MANY_SEED_USERS)):
        return model
    if model.custom_tower:
        # The rule replaces the built-in tower; a tower of your own is what you asked to train.
        log.info(
            "small-seed rule: about %.0f training seed users (< model.small_seed_users = %d), but model.user_tower is set: the rule does not apply",
            seed_users,
            model.small_seed_users,
        )
        return model
    if not components:
        return model
    k = min(small_seed_components(seed_users), components)
    width = small_seed_width(seed_users, model.output_dim)
    if by_mean:
        width = max(width, k)  # the fit's user vector is the components themselves (seed_mean_fit.py)
    log.info(
        "small-seed rule: about %.0f training seed users (< model.small_seed_users = %d): %d principal components, a linear head %d wide",
        seed_users,
        model.small_seed_users,
        k,
        width,
    )
    return replace(model, input_projection=k, hidden_dims=[], similarity="dot", output_dim=width)


def fits_seed_mean(configured: ModelConfig, chosen: ModelConfig) -> bool:
    """Whether the rule chose ``chosen`` (a projection the settings did not fix) and its fit is the
    seed mean's one Gaussian release (``model.small_seed_fit``, training/seed_mean_fit.py)."""
    return configured.small_seed_fit == "seed_mean" and configured.input_projection is None and chosen.input_projection is not None
