"""The small-seed rule: which two-tower model a run trains, from the DP estimate of its seed size.

Under DP-SGD every trainable weight takes Gaussian noise at every step, while the signal grows
with the number of seed users. With a seed of a few hundred users the default tower (embeddings,
a hidden layer: thousands of weights) drowns in that noise; a linear head on the publisher's 8
whitened principal components (``model.input_projection``, fitted without the seed) has a few
hundred weights and keeps far more of it. (The width, ``SMALL_SEED_COMPONENTS`` in model/config.py, was 16
for the measurements of the threshold below; at 150 seed users 8 did better, 4 about as well,
12 and 32 worse.) Measured at epsilon 1 with 3 repeats (lift@20%,
benchmarks/utility.py, docs/utility.md): at 165 seed users the rule gained 15-20% on Adult, the census table and
Caravan and lost 11% on the telco table; runs with PCA inputs outside the package put the
break-even near 300 (there the census table gained 11%, Adult and telco lost 2-3%; at 750 Adult
lost 5%). With 150-user seeds (``--dp-set model.small_seed_users=300``) it gained 19% on Adult,
14% on census and 38% on Caravan, and lost 8% on telco. Hence a threshold of 300 at first. With
8 components, measured again with the rule forced on and off (3-9 runs each): at 240 training
seed users the small model gained 6-13% on four of five tables, at 400 2-12% on four (telco
even), at 600 the two were within 1.5% but on census_married (+3%). So the default,
``model.small_seed_users``, is 500. The synthetic data the tests train on has seeds of a few
hundred users and exercises the configured tower (``debug=default`` turns the rule off);
``make demo``'s seeds are thousands of users, far above it.

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

from lookalike.model.config import ModelConfig

log = logging.getLogger(__name__)


def seed_users_estimate(examples: float, in_background_range: int, negative_rate: float, holdout_fraction: float) -> float:
    """Training seed users implied by ``examples`` training examples (see the module doc)."""
    h = holdout_fraction
    return max(0.0, (examples - in_background_range) * (1 - h) / (1 - h - negative_rate * h))


def model_for_seed(model: ModelConfig, seed_users: float | None, components: int | None) -> ModelConfig:
    """``model``, or its small-seed form when the rule applies: a two-tower model whose settings
    do not already fix the projection, a projection fitted for it (``components`` wide:
    SMALL_SEED_COMPONENTS, or the encoded width when narrower), and fewer seed users than ``model.small_seed_users``."""
    if model.kind != "two_tower" or model.input_projection is not None or model.small_seed_users is None or seed_users is None:
        return model
    if seed_users >= model.small_seed_users:
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
    log.info(
        "small-seed rule: about %.0f training seed users (< model.small_seed_users = %d): %d principal components, a linear head",
        seed_users,
        model.small_seed_users,
        components,
    )
    return replace(model, input_projection=components, hidden_dims=[], similarity="dot")
