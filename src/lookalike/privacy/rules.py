"""The clean-room rules: set by the data owners with their budget, enforced on every run.

The rules live in the ledger beside the budget they protect (``lookalike-budget create`` and
``set-rules``), never in the operator's config. A config value may only tighten a rule: a
looser one refuses the run with one line naming the rule, before any budget is reserved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from lookalike.errors import ConfigError

if TYPE_CHECKING:
    from lookalike.privacy.config import RulesConfig

# As in AWS Clean Rooms ML's minimumMatchingSeedSize.
MIN_SEED_RANGE = (25, 500_000)


@dataclass(frozen=True)
class Rules:
    min_matching_seed_size: int = 500
    min_aggregation_size: int = 100
    allow_list_output: bool = True
    max_epsilon_per_run: float | None = None  # None: the budget is the only limit
    allow_trusted_evaluation: bool = False  # exact seed-derived metrics: synthetic or public data only
    allow_non_private: bool = False  # privacy.enabled=false
    # export.include_seed_in_output=true: the segments then list the matched seed users first,
    # exact membership for whoever receives them (the advertiser's own list, back to them).
    allow_seed_in_output: bool = False
    # The largest delta of any one release (training, size counts, evaluation, report); None:
    # 1/(10 R) for the R publisher users the run reads (a public count).
    max_delta_per_release: float | None = None

    def __post_init__(self) -> None:
        lo, hi = MIN_SEED_RANGE
        if not lo <= self.min_matching_seed_size <= hi:
            raise ConfigError("rules.min_matching_seed_size", f"{self.min_matching_seed_size} must be a whole number in [{lo}, {hi}]")
        if self.min_aggregation_size < 1:
            raise ConfigError("rules.min_aggregation_size", f"{self.min_aggregation_size} must be a whole number >= 1")
        if self.max_epsilon_per_run is not None and not self.max_epsilon_per_run > 0:
            raise ConfigError("rules.max_epsilon_per_run", f"{self.max_epsilon_per_run} must be > 0 or unset")
        if self.max_delta_per_release is not None and not 0 < self.max_delta_per_release < 1:
            raise ConfigError("rules.max_delta_per_release", f"{self.max_delta_per_release} must be in (0, 1) or unset")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> "Rules":
        raw = json.loads(text) if text else {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def with_changes(self, **changes: Any) -> "Rules":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def effective_rules(stored: Rules, overrides: "RulesConfig", where: str) -> Rules:
    """The stored rules, tightened by the config's ``rules`` section (null keeps the stored
    value). A looser override is refused: the rules are the data owners'."""

    def looser(key: str, value: Any, stricter_is_larger: bool) -> None:
        current = getattr(stored, key)
        if (value < current) if stricter_is_larger else (value > current):
            raise ConfigError(
                f"rules.{key}",
                f"{value} is looser than the data owners' rule ({current}) in ledger '{where}': "
                "only the owners change it (lookalike-budget set-rules); leave it unset to use theirs",
            )

    changes: dict[str, Any] = {}
    size = overrides.min_matching_seed_size
    if size is not None:
        looser("min_matching_seed_size", int(size), True)
        changes["min_matching_seed_size"] = int(size)
    size = overrides.min_aggregation_size
    if size is not None:
        looser("min_aggregation_size", int(size), True)
        changes["min_aggregation_size"] = int(size)
    lists = overrides.allow_list_output
    if lists is not None:
        if bool(lists) and not stored.allow_list_output:
            raise ConfigError(
                "rules.allow_list_output",
                f"true is looser than the data owners' rule (false) in ledger '{where}': only the owners change it (lookalike-budget set-rules)",
            )
        changes["allow_list_output"] = bool(lists)
    return replace(stored, **changes)


def tightest(all_rules: list[Rules]) -> Rules:
    """The rules of a run that touches users of several budgets: each the strictest of theirs
    (an allowance only where all allow it, the largest minimum, the smallest maximum)."""
    strictest: dict[str, Any] = {}
    for f in fields(Rules):
        values = [getattr(r, f.name) for r in all_rules]
        if f.name.startswith("allow_"):
            strictest[f.name] = all(values)
        elif f.name.startswith("min_"):
            strictest[f.name] = max(values)
        elif f.name.startswith("max_"):
            given = [v for v in values if v is not None]
            strictest[f.name] = min(given) if given else None
        else:  # a new kind of rule must say which way is strict
            raise TypeError(f"rule {f.name} is neither allow_, min_ nor max_")
    return Rules(**strictest)


def delta_cap(rules: Rules, rows: int) -> float:
    """The largest delta one release may have: the owners' cap, or 1/(10 R) for R public rows."""
    return float(rules.max_delta_per_release) if rules.max_delta_per_release is not None else 1.0 / (10.0 * max(rows, 1))


def check_release_deltas(rules: Rules, rows: int, deltas: dict[str, float], where: str) -> None:
    """Refuse any release whose delta is above the owners' cap: a delta near 1 buys a tiny
    epsilon for a release that is all but exact (size_delta=0.9 released N exactly for 0.05)."""
    cap = delta_cap(rules, rows)
    source = "the data owners' rules.max_delta_per_release" if rules.max_delta_per_release is not None else f"1/(10 R) for the R = {rows} publisher users"
    for key, delta in deltas.items():
        if delta > cap * (1 + 1e-12):
            raise ConfigError(
                key, f"{delta:g} is above the largest delta one release may have in ledger '{where}' ({cap:.3g}, {source}); lower it or leave it null"
            )


def check_seed_in_output(rules: Rules, include: bool, where: str) -> None:
    """Segments that list the seed publish exact membership: only where the owners allow it."""
    if include and not rules.allow_seed_in_output:
        raise ConfigError(
            "export.include_seed_in_output",
            f"true is not allowed by the data owners' rules in ledger '{where}' (the segments would list the matched seed users); "
            "the owners allow it with lookalike-budget set-rules --allow-seed-in-output",
        )


def check_run_allowed(rules: Rules, *, private: bool, trusted: bool, epsilon: float, where: str) -> None:
    """Refuse what the owners do not allow: trusted evaluation, non-private runs, an epsilon
    above their per-run maximum."""
    if trusted and not rules.allow_trusted_evaluation:
        raise ConfigError(
            "trusted_evaluation",
            f"true is not allowed by the data owners' rules in ledger '{where}' (exact seed-derived "
            "numbers would leave the room); the owners allow it with lookalike-budget set-rules --allow-trusted-evaluation",
        )
    if not private and not rules.allow_non_private:
        raise ConfigError(
            "privacy.enabled",
            f"false is not allowed by the data owners' rules in ledger '{where}'; the owners allow it with lookalike-budget set-rules --allow-non-private",
        )
    if rules.max_epsilon_per_run is not None and epsilon > rules.max_epsilon_per_run + 1e-9:
        raise ConfigError(
            "privacy.target_epsilon",
            f"this run needs epsilon {epsilon:.4g}, above the data owners' maximum per run ({rules.max_epsilon_per_run:g}) in ledger '{where}'",
        )
