"""What one training run knows about itself: its ledger reservation, tags, metrics and folder.

Keeps the bookkeeping out of the training script so that ``train.run`` reads top to bottom.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from lookalike.data.matching import check_matched, check_released_matched
from lookalike.errors import LookalikeError
from lookalike.model.bundle import weights_digest
from lookalike.privacy.accounting import release_delta
from lookalike.privacy.budget_match import BudgetMatch, find_budget
from lookalike.privacy.ledger import Ledger
from lookalike.privacy.rules import Rules, check_release_deltas, check_run_allowed, effective_rules
from lookalike.privacy.size_release import SizeEstimate, release_size
from lookalike.training.checkpoint import Checkpoint
from lookalike.training.config import TrainConfig
from lookalike.training.loop import TrainResult
from lookalike.training.mechanism_rule import choose_mechanism
from lookalike.training.private_tuning import TrialPlan
from lookalike.training.resume_plan import resumable_entry, run_plan

log = logging.getLogger(__name__)


class RunContext:
    def __init__(self, cfg: TrainConfig, data: Any, delta: float | None, ledger: Ledger):
        self.cfg, self.data, self.delta, self.ledger = cfg, data, delta, ledger
        self.private = bool(cfg.privacy.enabled)
        # dp_sgd or label_rr, fixed by the setting or, for auto, on the DP counts (release_counts).
        self.mechanism = "none" if not self.private else "label_rr" if cfg.label_rr else "dp_sgd"
        if cfg.label_rr:
            self.delta = 0.0  # randomised response is pure: no training delta to reserve or report
        # Held-out metrics are released with DP unless the run is trusted (then they are exact).
        dp_eval = self.private and not cfg.trusted_evaluation
        self.eval_epsilon = float(cfg.evaluation.epsilon) if dp_eval else 0.0
        rows = int(data.publisher_rows)
        self.eval_delta = release_delta(cfg.evaluation.delta, 1e-6, rows) if dp_eval else 0.0
        self.eval_noise_multiplier = 0.0  # noise std / L2 sensitivity of the evaluation release
        # Every private run releases DP estimates of the training-set size (DP-SGD's sample rate is a
        # batch of it) and of each audience's matched seed users (the owners' minimum is decided
        # on them), right after its reservation (size_release.py).
        self.size_epsilon = float(cfg.privacy.size_epsilon) if self.private else 0.0
        self.size_delta = release_delta(cfg.privacy.size_delta, 1e-7, rows) if self.private else 0.0
        self.size: SizeEstimate | None = None
        self.budget: BudgetMatch | None = None
        self.rules: Rules | None = None
        self.entry_id: int | None = None
        self.claim = uuid.uuid4().hex  # this process's hold on its reservation (a resume takes it over)
        self.resumed = False
        self.adopted_claim: str | None = None  # the claim of the checkpoint a resume took over
        self.training_started = False
        self.finished = False
        self.result: TrainResult | None = None
        self.selection: TrialPlan | None = None  # private tuning's plan: its best-of-K release replaces training

    @property
    def epsilon(self) -> float:
        """What the run reserves: training, the size estimate and the evaluation release."""
        return float(self.cfg.privacy.target_epsilon) + self.size_epsilon + self.eval_epsilon if self.private else 0.0

    def check_rules(self) -> Rules:
        """Read-only, before anything is reserved or logged: the budget covering these users and
        the data owners' rules, tightened by the config, and the seed's minimum size."""
        self.budget = find_budget(self.ledger, self.data.users)
        self.rules = effective_rules(self.budget.rules, self.cfg.rules, self.ledger.path)
        check_run_allowed(self.rules, private=self.private, trusted=bool(self.cfg.trusted_evaluation), epsilon=self.epsilon, where=self.ledger.path)
        if self.private:
            deltas = {"privacy.target_delta": float(self.delta or 0.0), "privacy.size_delta": self.size_delta, "evaluation.delta": self.eval_delta}
            check_release_deltas(self.rules, int(self.data.publisher_rows), deltas, self.ledger.path)
        if self.cfg.trusted_evaluation or not self.private:
            # Exact counts may leave a trusted run; a private one decides on its DP release
            # after reserving (release_counts), so that the refusal is charged.
            check_matched(self.data.training.matched, self.data.n_train, self.rules.min_matching_seed_size, True)
        if self.budget.new_snapshot is not None:
            log.info("publisher data: about %.0f%% of its users are in budget %s's data; charged there", 100 * self.budget.share, self.budget.fingerprint[:12])
        if self.budget.also:
            log.info(
                "publisher data: some users belong to budgets %s too: charged on each, under the tightest rules", ", ".join(fp[:12] for fp in self.budget.also)
            )
        return self.rules

    def plan(self) -> dict[str, str]:
        return run_plan(self.cfg)

    def open_reservation(self, resume: Checkpoint | None) -> None:
        """Reserve the run's epsilon, or adopt the reservation of the run being resumed, which
        must keep its plan (more epochs or another sigma would spend beyond its reservation)."""
        if not self.private:
            return
        if resume is not None:
            self._adopt(resume)
            return
        budget = self._matched()
        self.entry_id = self.ledger.reserve(
            budget.fingerprint,
            self.epsilon,
            float(self.delta or 0.0) + self.size_delta + self.eval_delta,
            kind="train",
            description=f"lookalike-train {self.cfg.mlflow.experiment_name}",
            attach=budget.new_snapshot,
            claim=self.claim,
            plan={"settings": self.plan()},
            also=budget.also,
        )
        log.info(
            "ledger entry %d: reserved epsilon %.4g (training %.4g, size estimate %.4g, evaluation %.4g) on budget %s",
            self.entry_id,
            self.epsilon,
            self.cfg.privacy.target_epsilon,
            self.size_epsilon,
            self.eval_epsilon,
            budget.fingerprint[:12],
        )

    def _adopt(self, resume: Checkpoint) -> None:
        """Continue the checkpoint's reservation under the plan its ledger entry holds (resume_plan.py)."""
        entry, self.size = resumable_entry(self.ledger, resume, self.plan(), self._matched().fingerprint)
        self.ledger.take_over(entry["id"], resume.meta.get("claim"), self.claim)
        self.entry_id, self.resumed, self.adopted_claim = entry["id"], True, resume.meta.get("claim")

    def release_counts(self) -> None:
        """Right after a fresh private run's reservation: release the DP size and match counts
        (size_release.py), keep them with the entry, and decide the owners' minimum seed size on
        them. From here on a failure or refusal keeps their epsilon charged (abort)."""
        if not self.private or self.resumed or self.size is not None:
            return
        training = self.data.training
        self.size = release_size(self.data.n_train, self.size_epsilon, self.size_delta, training.matched)
        assert self.entry_id is not None  # open_reservation reserved for this private run
        self.ledger.note(self.entry_id, "size", asdict(self.size))
        self._choose_mechanism()
        if not self.cfg.trusted_evaluation:
            check_released_matched(self.size.matched, self._rules().min_matching_seed_size, self.size_epsilon)

    def _choose_mechanism(self) -> None:
        """``privacy.mechanism=auto`` decides here, on the counts just released, and the entry
        keeps the choice: a resume follows it, and refuses a run that drew its labels."""
        assert self.size is not None and self.entry_id is not None
        population = int(self.data.training.population_rows.size)
        self.mechanism = choose_mechanism(self.cfg, self.size.matched, population, int(self.data.publisher_rows))
        if self.mechanism == "label_rr":
            self.delta = 0.0
        self.ledger.note(self.entry_id, "mechanism", self.mechanism)
        if self.cfg.privacy.mechanism == "auto":
            log.info("privacy.mechanism=auto: %s, from the DP counts of the seed (training/mechanism_rule.py)", self.mechanism)

    def use_mechanism(self, mechanism: str) -> None:
        """A mechanism the model rule chose after the counts (``seed_mean``: one Gaussian release,
        training/seed_mean_fit.py), kept with the entry as its ``fit`` before it runs (the entry's
        ``mechanism``, written with the counts, stays dp_sgd): a resume refuses it."""
        assert self.private and self.entry_id is not None and not self.training_started
        self.mechanism = mechanism
        self.ledger.note(self.entry_id, "fit", mechanism)
        log.info("small-seed rule: the model is fitted by %s (model.small_seed_fit)", mechanism)

    @property
    def estimate(self) -> int | None:
        """The DP estimate of the training-set size the sample rate is a batch of (None: non-private)."""
        return self.size.value if self.size is not None else None

    def trained(self, result: Any) -> None:
        self.result = result

    @contextmanager
    def reservation(self, resume: Checkpoint | None):
        """The run's hold on the budget, from reservation to record. Entering reserves (or adopts
        the resumed run's reservation); an exception releases it while no DP step has touched the
        data and keeps it charged once one has; leaving normally requires the spend recorded."""
        self.open_reservation(resume)
        try:
            yield self
        except BaseException:
            self.abort()
            raise
        if self.private and not self.finished:
            raise RuntimeError("the run left its reservation without recording its spend (RunContext.finish)")

    def finish(self) -> None:
        if self.result is None or not self.training_started:
            raise RuntimeError("RunContext.finish before training: the spend is recorded after begin_training and trained")
        self.finished = True
        if self.private and self.entry_id is not None:
            # The entry names the model it released: export trusts that, not the model's own file.
            self.ledger.note(self.entry_id, "model", weights_digest(self.result.model))
        if self.private and self.entry_id is not None and self.resumed:
            # The steps before the resume are known only from the checkpoint, a file the operator
            # can edit: charge the reservation in full (what the plan spends), at face value.
            self.ledger.record_spent(self.entry_id, float(self.ledger.entry(self.entry_id)["reserved_epsilon"]), None)
        elif self.private and self.entry_id is not None and self.selection is not None:
            # Not a composition of Gaussian steps: charged at face value (events None).
            self.ledger.record_spent(self.entry_id, self.selection.selection_epsilon + self.size_epsilon + self.eval_epsilon, None)
        elif self.private and self.entry_id is not None and self.mechanism == "label_rr":
            # Randomised response is pure epsilon, not a Gaussian step: charged at face value too.
            self.ledger.record_spent(self.entry_id, (self.result.epsilon or 0.0) + self.size_epsilon + self.eval_epsilon, None)
        elif self.private and self.entry_id is not None:
            events = list(self.result.history) + ([(self.eval_noise_multiplier, 1.0, 1)] if self.eval_epsilon else [])
            events += [(self.size.noise_multiplier, 1.0, 1)] if self.size is not None else []
            self.ledger.record_spent(self.entry_id, (self.result.epsilon or 0.0) + self.size_epsilon + self.eval_epsilon, events)

    def begin_training(self) -> None:
        """From here on the data has been touched by DP steps: a failure keeps the charge."""
        self.training_started = True

    def abort(self) -> None:
        """On failure a reservation stays charged once training began; before, only the counts
        released under it are (whether the run was refused on them or failed for any other
        reason), and the rest is given back."""
        if self.private and self.entry_id is not None and self.resumed and not self.training_started:
            # Refused before its first step (a checkpoint of another model, say): nothing trained
            # here, so the claim goes back to the checkpoint, which can resume it again.
            self.ledger.take_over(self.entry_id, self.claim, self.adopted_claim)
            return
        if not self.private or self.entry_id is None or self.training_started or self.resumed:
            return
        if self.size is not None:
            self.ledger.record_spent(self.entry_id, self.size_epsilon, [(self.size.noise_multiplier, 1.0, 1)])
            log.info("ledger entry %d: stopped before training; its size and match counts stay charged (epsilon %.4g)", self.entry_id, self.size_epsilon)
        else:
            self.ledger.release(self.entry_id)
            log.info("ledger entry %d released: the run failed before training", self.entry_id)

    def checkpoint_meta(self) -> dict:
        return {
            "users": self.data.users.digest,
            "ledger_entry_id": self.entry_id,
            "ledger_path": str(self.ledger.path),
            "claim": self.claim,
        }

    def _rules(self) -> Rules:
        if self.rules is None:
            raise LookalikeError("the run's rules are unknown: check_rules() comes before the reservation")
        return self.rules

    def _matched(self) -> BudgetMatch:
        if self.budget is None:
            raise LookalikeError("the run's budget is unknown: check_rules() comes before the reservation")
        return self.budget
