"""The privacy sections: DP-SGD's target (``privacy``), tightening of the owners' rules (``rules``)
and where the ledger is (``ledger``)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Optional

from lookalike.errors import ConfigError
from lookalike.privacy.accounting import ACCOUNTANTS, GRAD_SAMPLE_MODES
from lookalike.privacy.rules import MIN_SEED_RANGE
from lookalike.settings import number, one_of, set_value, whole

MECHANISMS = ("dp_sgd", "label_rr", "auto")


@dataclass
class PrivacyConfig:
    enabled: bool = True  # false trains the same model without DP (needs trusted_evaluation=true and the owners' leave)
    target_epsilon: float = 3.0  # the training run's epsilon, reserved in the ledger with size_epsilon and evaluation.epsilon
    target_delta: Optional[float] = None  # null: 1/(10 R) for the R publisher users
    max_grad_norm: float = 1.0  # per-example clipping norm
    size_epsilon: float = 0.2  # the DP estimates of the training-set size and the matched seed counts
    size_delta: Optional[float] = None  # null: min(1e-7, 1/(100 R)) for the R publisher users
    accountant: str = "prv"  # prv (tight) or rdp
    grad_sample_mode: str = "fused"  # fused (our ghost clipping), or Opacus' hooks / functorch (several times slower)
    secure_mode: bool = False  # Opacus' secure RNG: needs torchcsprng, which has no build for current torch, so true is refused
    mechanism: str = "auto"  # dp_sgd; label_rr: randomised response on the labels (privacy/label_rr.py); auto: chosen on the DP counts
    label_rr_users: Optional[int] = 1_000_000  # label_rr's population: a keyed-hash sample at rate this / the files' rows (seed or not); null: all

    def check(self) -> None:
        if not self.enabled:
            return
        for key, upper in (("target_epsilon", math.inf), ("max_grad_norm", math.inf), ("size_epsilon", math.inf), ("size_delta", 1.0)):
            value = getattr(self, key)
            if value is None and key == "size_delta":
                continue
            bound = "a positive, finite number" if upper == math.inf else f"a number in (0, {upper:g})"
            if not 0 < number(f"privacy.{key}", value) < upper:
                raise ConfigError(f"privacy.{key}", f"'{value}' must be {bound}")
        one_of("privacy.accountant", self.accountant, ACCOUNTANTS)
        one_of("privacy.mechanism", self.mechanism, MECHANISMS)
        if self.label_rr_users is not None:
            whole("privacy.label_rr_users", self.label_rr_users)
        if self.secure_mode and importlib.util.find_spec("torchcsprng") is None:
            # Opacus' secure_mode draws noise from torchcsprng, whose last release (0.2.1, 2021)
            # has no build for current torch: refuse up front rather than fail mid-run.
            raise ConfigError(
                "privacy.secure_mode",
                "true needs the torchcsprng package (Opacus' secure RNG), which is not installed "
                "and has no build for this torch; set privacy.secure_mode=false",
            )
        one_of("privacy.grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)


@dataclass
class RulesConfig:
    """May only tighten the data owners' rules, which live in the ledger (checked against it later;
    here only the shape of the values). null: the owners' value."""

    min_matching_seed_size: Optional[int] = None  # a seed audience matching fewer publisher users is refused (owners' default 500)
    min_aggregation_size: Optional[int] = None  # no released count or segment below this size (owners' default 100)
    allow_list_output: Optional[bool] = None  # false: export writes the report only, no user lists

    def check(self) -> None:
        if self.min_matching_seed_size is not None:
            whole("rules.min_matching_seed_size", self.min_matching_seed_size, *MIN_SEED_RANGE)
        if self.min_aggregation_size is not None:
            whole("rules.min_aggregation_size", self.min_aggregation_size)


@dataclass
class LedgerConfig:
    path: str = "outputs/privacy_ledger.sqlite"  # a file, or a database URL (postgresql+psycopg://...)

    def check(self) -> None:
        set_value("ledger.path", self.path)
