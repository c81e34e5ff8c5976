"""`make mutate`: break the privacy code one line at a time and show that a test fails each time.

A test proves something only if breaking the code breaks it. Each mutation below is a one-line
change an audit or a careless edit could make (noise divided by 10, a sensitivity halved, a
check removed); each runs against a copy of the source tree, with the tests named beside it,
and must make at least one of them fail. Prints a Markdown table; exits 1 if any mutation
survives (or if the unmutated tests do not pass).

    python tests/mutate.py            # all mutations
    python tests/mutate.py noise      # those whose name contains "noise"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = "src/lookalike/"

# (name, file, original line fragment, mutated fragment, tests that must catch it)
MUTATIONS = [
    (
        "private tuning: the cost of K trials dropped",
        "privacy/selection_bound.py",
        "bound = curve + math.log(mean) / (ORDERS - 1.0) + constant",
        "bound = curve + constant",
        ["tests/test_private_tuning.py::test_the_selection_bound_matches_dp_accounting"],
    ),
    (
        "private tuning: the plan ignores the number of trials",
        "training/private_tuning.py",
        "(score, 1.0, 1)], delta, mean, shape)",
        "(score, 1.0, 1)], delta, 1, shape)",
        ["tests/test_private_tuning.py::test_the_plan_spends_what_one_run_reserves_for_training"],
    ),
    (
        "private tuning: reach score noise / 10",
        "training/reach_score.py",
        "noise_multiplier * math.sqrt(counts.size))",
        "noise_multiplier * math.sqrt(counts.size) / 10)",
        ["tests/test_noise_scale.py::test_private_tuning_reach_counts_carry_multiplier_times_sqrt_audiences"],
    ),
    (
        "private tuning: threshold over the non-seed negatives",
        "training/reach_score.py",
        "reference = score(model, data.reference_features, device)",
        "reference = score(model, data.eval_negative_features, device)",
        ["tests/test_private_tuning.py::test_one_seed_user_moves_the_reach_count_by_at_most_one"],
    ),
    (
        "lazy noise: a row's owed noise never drawn",
        "training/dp_sgd/lazy_tables.py",
        "if rows.numel() == 0 or not bool((owed > 0).any()):",
        "if True:",
        ["tests/test_lazy_noise.py::test_lazy_noise_has_dense_dp_sgds_distribution"],
    ),
    (
        "lazy noise: owed variance drawn as a std",
        "training/dp_sgd/lazy_tables.py",
        "unit.mul_(owed.sqrt().to(weight.dtype)",
        "unit.mul_(owed.to(weight.dtype)",
        ["tests/test_lazy_noise.py::test_lazy_noise_has_dense_dp_sgds_distribution"],
    ),
    (
        "lazy noise: a step's variance not squared",
        "training/dp_sgd/lazy_tables.py",
        "self.released += (self.lr * noise_std / divisor) ** 2",
        "self.released += self.lr * noise_std / divisor",
        ["tests/test_lazy_noise.py::test_lazy_noise_has_dense_dp_sgds_distribution"],
    ),
    (
        "lazy noise: the model saved without a flush",
        "training/dp_sgd/lazy_tables.py",
        "        self.flush()\n        for handle in self.handles:",
        "        for handle in self.handles:",
        ["tests/test_lazy_noise.py::test_lazy_noise_has_dense_dp_sgds_distribution"],
    ),
    (
        "lazy noise: a row read twice in a batch drawn twice",
        "training/row_adam.py",
        "    return ids.masked_select(is_first), slot.index_select(0, representative)",
        "    return ids, torch.arange(ids.numel())",
        ["tests/test_lazy_noise.py::test_lazy_noise_has_dense_dp_sgds_distribution", "tests/test_lazy_noise.py::test_a_read_row_carries_every_step_it_missed"],
    ),
    (
        "lazy noise: a checkpoint written with noise still owed",
        "training/loop.py",
        "            lazy.flush()  # a checkpoint",
        "            pass  # a checkpoint",
        ["tests/test_sparse_tables.py::test_dp_tables_take_lazy_noise_every_row_noised_and_the_model_learns"],
    ),
    (
        "DP-SGD noise / 10 (fused)",
        "training/dp_sgd/noisy_optimizer.py",
        "torch.normal(g, std, generator",
        "torch.normal(g, std / 10, generator",
        ["tests/test_noise_scale.py"],
    ),
    (
        "DP-SGD noise dropped on 2-D parameters",
        "training/dp_sgd/noisy_optimizer.py",
        "            if std > 0:\n",
        "            if std > 0 and g.dim() != 2:\n",
        ["tests/test_noise_scale.py"],
    ),
    (
        "torchrun: every rank adds noise",
        "training/dp_sgd/noisy_optimizer.py",
        "super().noise_std() if self.world.primary else 0.0",
        "super().noise_std()",
        ["tests/test_noise_scale.py"],
    ),
    (
        "DP-SGD noise on the first step only (fused)",
        "training/dp_sgd/noisy_optimizer.py",
        "        std = self.noise_std()\n",
        '        std, self._noised = (0.0 if getattr(self, "_noised", False) else self.noise_std()), True\n',
        ["tests/test_noise_scale.py::test_dp_sgd_noise_std_is_multiplier_times_clip_on_every_parameter"],
    ),
    (
        "DP-SGD fused clipping at 10x the norm the noise is scaled for",
        "training/dp_sgd/engine.py",
        "FusedClipping(model, float(privacy.max_grad_norm), lazy)",
        "FusedClipping(model, 10 * float(privacy.max_grad_norm), lazy)",
        ["tests/test_noise_scale.py::test_dp_sgd_clips_each_example_at_the_norm_its_noise_is_scaled_for"],
    ),
    (
        "DP-SGD fused clipping: a bag's repeated ids counted apart (its norm under-estimated)",
        "training/dp_sgd/fused_clipping.py",
        "products.masked_fill_(inputs.unsqueeze(2) != inputs.unsqueeze(1), 0.0)",
        "products.masked_fill_(~torch.eye(inputs.shape[1], dtype=torch.bool), 0.0)",
        ["tests/test_fused_clipping.py::test_matches_per_example_loop"],
    ),
    (
        "DP-SGD fused clipping: a row whose ids do not fall taken as repeat-free (equal ids pass)",
        "training/dp_sgd/fused_clipping.py",
        "bool((inputs[:, 1:] > inputs[:, :-1]).all())",
        "bool((inputs[:, 1:] >= inputs[:, :-1]).all())",
        ["tests/test_fused_clipping.py::test_shared_table_ids_that_meet_count_as_one_row"],
    ),
    (
        "DP-SGD fused clipping: a linear layer's bias left out of its example's norm",
        "training/dp_sgd/fused_clipping.py",
        ".square_().add_(float(bias)).mul_(g_sq)",
        ".square_().mul_(g_sq)",
        ["tests/test_fused_clipping.py::test_matches_per_example_loop"],
    ),
    (
        "DP-SGD fused clipping: the cosine audience tower's weight norm unsquared",
        "model/audience.py",
        "@ (scale / norm_w).square()",
        "@ (scale / norm_w)",
        ["tests/test_fused_clipping.py::test_matches_per_example_loop"],
    ),
    (
        "q halved in the accountant",
        "training/dp_sgd/engine.py",
        "get_optimizer_hook_fn(sample_rate=sample_rate)",
        "get_optimizer_hook_fn(sample_rate=sample_rate / 2)",
        ["tests/test_train.py::test_reported_epsilon_equals_a_fresh_accountant_for_the_steps_taken"],
    ),
    (
        "epoch-end RDP cached without its step count",
        "privacy/accountants.py",
        "return _step_rdp(q, noise_multiplier, tuple(orders)) * steps",
        "return _step_rdp(q, noise_multiplier, tuple(orders))",
        ["tests/test_accounting.py"],
    ),
    (
        "epoch-end PRV epsilon remembered across steps",
        "privacy/accountants.py",
        "question = (tuple(map(tuple, self.history)), delta,",
        "question = (delta,",
        ["tests/test_accounting.py::test_the_cached_accountants_report_opacus_epsilon_to_the_last_bit"],
    ),
    (
        "PRV answers remembered without the domain that gave them",
        "privacy/accountants.py",
        "delta_error, self._planned_domain(), tuple(sorted(kwargs.items())))",
        "delta_error, tuple(sorted(kwargs.items())))",
        ["tests/test_accounting.py::test_a_remembered_answer_is_for_the_same_domain"],
    ),
    (
        "epoch-end PRV composes one step too few on the planned domain",
        "privacy/accountants.py",
        "pmf = fft.irfft(_integer_power(spectrum, steps), n=len(step.pmf))",
        "pmf = fft.irfft(_integer_power(spectrum, steps - 1), n=len(step.pmf))",
        ["tests/test_accounting.py::test_epoch_end_epsilon_on_the_planned_domain_bounds_opacus"],
    ),
    (
        "epoch-end PRV's repeated squaring drops the odd factors after the first",
        "privacy/accountants.py",
        "            result = base if result is None else result * base",
        "            result = base if result is None else result",
        ["tests/test_accounting.py::test_epoch_end_epsilon_on_the_planned_domain_bounds_opacus"],
    ),
    (
        "epoch-end PRV domain sized for the steps so far, its mesh kept",
        "privacy/accountants.py",
        "num_self_compositions=[planned], eps_error=eps_error",
        "num_self_compositions=[steps], eps_error=eps_error",
        ["tests/test_accounting.py::test_epoch_end_epsilon_on_the_planned_domain_bounds_opacus"],
    ),
    (
        "evaluation histogram sensitivity halved",
        "training/dp_metrics.py",
        "(2.0 * len(pos)) ** 0.5)",
        "(2.0 * len(pos)) ** 0.5 / 2)",
        ["tests/test_noise_scale.py"],
    ),
    (
        "evaluation release in the ledger at its std, not its multiplier",
        "training/holdout_eval.py",
        "multiplier = sigma / (2.0 * len(audiences)) ** 0.5",
        "multiplier = sigma",
        ["tests/test_composition.py::test_a_real_training_run_records_its_mechanisms"],
    ),
    (
        "export report sensitivity halved",
        "export/job.py",
        "plan.dims_per_audience(len(bins))) ** 0.5",
        "plan.dims_per_audience(len(bins))) ** 0.5 / 2",
        ["tests/test_export.py::test_percentage_bins_write_nested_ranked_segments_without_seed_users"],
    ),
    (
        "report hits by score threshold (ties share a fate)",
        "export/report.py",
        "inside |= tied & pc.less_equal(held_ids, user).to_numpy(zero_copy_only=False)",
        "inside |= tied",
        ["tests/test_report_ties.py"],
    ),
    ("centroid noise from the seeded global generator", "model/centroid.py", "generator=generator", "generator=None", ["tests/test_noise_scale.py"]),
    (
        "randomised exclusion at half its epsilon",
        "privacy/mechanisms.py",
        "keep_truth = math.exp(epsilon) / (1.0 + math.exp(epsilon))",
        "keep_truth = math.exp(epsilon / 2) / (1.0 + math.exp(epsilon / 2))",
        ["tests/test_noise_scale.py"],
    ),
    (
        "hooks/functorch sample at the exact size",
        "training/dp_sgd/engine.py",
        "        _sample_at(dp_loader, dp_optimizer, engine, math.ceil(examples / batch_size), examples)",
        "        pass",
        ["tests/test_fused_training.py::test_fused_and_hooks_account_alike_and_both_learn"],
    ),
    (
        "training-set size released exactly",
        "privacy/size_release.py",
        "dtype=np.float64) + np.random",
        "dtype=np.float64) + 0 * np.random",
        ["tests/test_relation.py"],
    ),
    (
        "label-flip relation (background without seed users)",
        "data/matching.py",
        "background = np.flatnonzero(~held &",
        "background = np.flatnonzero(~is_seed &",
        ["tests/test_relation.py"],
    ),
    ("resume without its plan check", "training/resume_plan.py", "if settings.get(key) != mine.get(key):", "if False:", ["tests/test_resume_plan.py"]),
    (
        "resume takes the checkpoint's noise multiplier",
        "training/loop.py",
        "            noise_multiplier=noise_multiplier,\n",
        "            noise_multiplier=resume.noise_multiplier if resume else noise_multiplier,\n",
        ["tests/test_resume_plan.py::test_an_edited_checkpoint_neither_changes_the_plan_nor_undercharges"],
    ),
    (
        "minimum seed size decided on the exact counts",
        "training/run_context.py",
        "check_released_matched(self.size.matched,",
        "check_released_matched(self.data.training.matched,",
        ["tests/test_seed_size_oracle.py::test_the_decision_follows_the_released_counts_not_the_exact_ones"],
    ),
    (
        "a run stopped after its counts gives their charge back",
        "training/run_context.py",
        "        if self.size is not None:\n            self.ledger.record_spent(",
        "        if False:\n            self.ledger.record_spent(",
        ["tests/test_seed_size_oracle.py::test_a_refusal_on_the_minimum_seed_size_is_charged_and_decided_on_a_dp_count"],
    ),
    (
        "a ledger keyed by the old user hash is matched on the new one",
        "privacy/budget_match.py",
        "    if old:\n",
        "    if False:\n",
        ["tests/test_ledger_rekey.py"],
    ),
    (
        "rekey maps a dataset the table only partly holds",
        "privacy/rekey.py",
        "if dataset.hashes.size and not np.array_equal(v1[at], dataset.hashes):",
        "if False:",
        ["tests/test_ledger_rekey.py::test_rekey_needs_a_table_holding_every_stored_user"],
    ),
    (
        "a run is charged on its home budget only",
        "privacy/budget_match.py",
        "also = tuple(fp for _, fp in touched if fp != fingerprint)",
        "also: tuple[str, ...] = ()",
        ["tests/test_budget_laundering.py"],
    ),
    (
        "a release delta above the owners' cap passes",
        "privacy/rules.py",
        "if delta > cap * (1 + 1e-12):",
        "if False:",
        ["tests/test_delta_caps.py"],
    ),
    (
        "export trusts the model's own metadata",
        "export/job.py",
        "private = released_privately(ledger, model, budget.fingerprint, uri)",
        "private = bool(meta.get('private'))",
        ["tests/test_export_provenance.py"],
    ),
    (
        "private tuning: trials start from the logged seed's weights",
        "training/private_tuning.py",
        "torch.manual_seed(secrets.randbits(63))",
        "torch.manual_seed(int(cfg.seed))",
        ["tests/test_private_tuning.py::test_trials_start_from_weights_the_logged_seed_cannot_regenerate"],
    ),
    ("spend above the reservation passes silently", "privacy/ledger.py", "if epsilon > reserved + TOLERANCE:", "if False:", ["tests/test_ledger.py"]),
    (
        "NaN epsilon reaches the budget check",
        "privacy/ledger.py",
        "if not (math.isfinite(epsilon) and epsilon >= 0):",
        "if epsilon < 0:",
        ["tests/test_ledger.py"],
    ),
    (
        "a looser rule override is accepted",
        "privacy/rules.py",
        "if (value < current) if stricter_is_larger else (value > current):",
        "if False:",
        ["tests/test_rules.py"],
    ),
    (
        "trusted evaluation without the owners' leave",
        "privacy/rules.py",
        "if trusted and not rules.allow_trusted_evaluation:",
        "if False:",
        ["tests/test_rules.py"],
    ),
    (
        "a new snapshot gets a fresh budget",
        "privacy/budgets.py",
        "if share >= SHARED_USERS:\n                raise",
        "if share > 1.0:\n                raise",
        ["tests/test_ledger_key.py"],
    ),
    (
        "batch rule reads the exact training-set size",
        "training/loop.py",
        "plan = batch_plan(cfg, examples, delta)",
        "plan = batch_plan(cfg, len(tensors[0]), delta)",
        ["tests/test_batch_rule.py::test_a_run_takes_the_rule_batch_of_the_released_size_not_the_exact_one"],
    ),
    (
        "small-seed rule reads the exact training-set size",
        "training/inputs.py",
        "        examples = estimate\n",
        "        examples = self.data.n_train\n",
        ["tests/test_input_projection.py::test_the_rule_reads_the_released_size_not_the_exact_one"],
    ),
    (
        "input projection fitted on the rows kept for training (seed members among them)",
        "training/prepare.py",
        "projection = _input_projection(lambda: chunks_of(source, dataset, columns, row_filter, path), spec, cfg, col)",
        "projection = _input_projection(lambda: iter([table]), spec, cfg, col)",
        ["tests/test_input_projection.py::test_the_projection_is_fitted_on_the_publisher_table_without_the_seed"],
    ),
    (
        "audit ignores delta",
        "privacy/audit_bound.py",
        "return min(1.0, tail + 2.0 * canaries * delta * steepest)",
        "return tail",
        ["tests/test_audit_bound.py"],
    ),
    (
        "label_rr: a user's labels each flipped at the whole epsilon, not its share",
        "privacy/label_rr.py",
        "tail = math.exp(-epsilon / audiences)",
        "tail = math.exp(-epsilon)",
        ["tests/test_label_rr.py::test_each_label_flips_at_the_rate_its_share_of_epsilon_calls_for"],
    ),
    (
        "label_rr: the training population leaves out held-out seed users only",
        "data/matching.py",
        "population = np.flatnonzero((draws[:, 0] >= holdout_fraction) & in_background_range(",
        "population = np.flatnonzero(~held & in_background_range(",
        ["tests/test_label_rr.py::test_joining_the_seed_changes_one_users_labels_and_no_row"],
    ),
    (
        "label_rr: the loop trains on the exact labels",
        "training/label_rr_fit.py",
        "flipped = randomized_labels(exact, epsilon)",
        "flipped = exact",
        ["tests/test_label_rr.py::test_a_label_rr_run_trains_every_user_and_charges_its_epsilon"],
    ),
    (
        "mechanism rule reads the exact match counts",
        "training/run_context.py",
        "choose_mechanism(self.cfg, self.size.matched, population",
        "choose_mechanism(self.cfg, self.data.training.matched, population",
        ["tests/test_label_rr.py::test_auto_decides_on_the_released_counts_and_a_resume_of_its_labels_is_refused"],
    ),
    (
        "a resume of a run that drew its labels goes on",
        "training/resume_plan.py",
        'if mechanism != "dp_sgd":',
        "if False:",
        ["tests/test_label_rr.py::test_auto_decides_on_the_released_counts_and_a_resume_of_its_labels_is_refused"],
    ),
    (
        "label_rr: the labels' epsilon left out of the ledger's composition",
        "training/run_context.py",
        'elif self.private and self.entry_id is not None and self.mechanism == "label_rr":',
        "elif False:",
        ["tests/test_label_rr.py::test_a_label_rr_run_trains_every_user_and_charges_its_epsilon"],
    ),
    (
        "label_rr: the streamed pass keeps DP-SGD's rows only (the population then holds seed users beyond them)",
        "data/publisher_pass.py",
        "max(float(data.negative_rate), population_rate)",
        "float(data.negative_rate)",
        ["tests/test_label_rr.py::test_the_population_prepare_keeps_is_the_same_whoever_is_in_the_seed"],
    ),
    (
        "seed mean: noise / 10",
        "training/seed_mean_fit.py",
        "std = noise_multiplier * clip * math.sqrt(labels.shape[1])",
        "std = noise_multiplier * clip * math.sqrt(labels.shape[1]) / 10",
        ["tests/test_seed_mean_fit.py::test_the_release_noise_has_the_calibrated_std_for_every_audience"],
    ),
    (
        "seed mean: sensitivity without sqrt(audiences)",
        "training/seed_mean_fit.py",
        "std = noise_multiplier * clip * math.sqrt(labels.shape[1])",
        "std = noise_multiplier * clip",
        ["tests/test_seed_mean_fit.py::test_the_release_noise_has_the_calibrated_std_for_every_audience"],
    ),
    (
        "seed mean: rows not clipped",
        "training/seed_mean_fit.py",
        "clipped = z * (clip / z.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)",
        "clipped = z",
        ["tests/test_seed_mean_fit.py::test_each_seed_user_adds_at_most_the_clip_and_non_seed_users_nothing"],
    ),
    (
        "seed mean: the fit's multiplier / 10",
        "training/seed_mean_fit.py",
        "sums = noisy_seed_sums(z, labels, clip, multiplier, ",
        "sums = noisy_seed_sums(z, labels, clip, multiplier / 10, ",
        ["tests/test_seed_mean_fit.py::test_the_fit_releases_with_the_calibrated_noise_and_not_from_the_logged_seed"],
    ),
    (
        "seed mean: noise from the seeded global generator",
        "training/seed_mean_fit.py",
        "entropy_generator(z.device)",
        "None",
        ["tests/test_seed_mean_fit.py::test_the_fit_releases_with_the_calibrated_noise_and_not_from_the_logged_seed"],
    ),
    (
        "seed mean: a resume of its entry trains DP-SGD on top of the release",
        "training/resume_plan.py",
        'mechanism = planned.get("fit", planned.get("mechanism", "dp_sgd"))',
        'mechanism = planned.get("mechanism", "dp_sgd")',
        ["tests/test_seed_mean_fit.py::test_a_checkpoint_naming_a_seed_mean_entry_is_refused"],
    ),
]


def mutated_tree(file: str, old: str, new: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="mutant-"))
    for part in ("src", "tests", "pyproject.toml"):
        source = ROOT / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tree / part)
    target = tree / SRC / file
    text = target.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"mutation target not found exactly once in {file}: {old!r} (the code moved: update tests/mutate.py)")
    target.write_text(text.replace(old, new))
    return tree


def run_tests(tree: Path, tests: list[str]) -> tuple[bool, float]:
    start = time.perf_counter()
    env = os.environ | {"PYTHONPATH": str(tree / "src") + os.pathsep + str(tree), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "", *tests], cwd=tree, env=env, capture_output=True, text=True
    )
    return proc.returncode == 0, time.perf_counter() - start


def main(pattern: str = "") -> int:
    chosen = [m for m in MUTATIONS if pattern.lower() in m[0].lower()]
    rows, survivors = [], 0
    baseline = mutated_tree(chosen[0][1], chosen[0][2], chosen[0][2])  # unmutated copy
    passed, seconds = run_tests(baseline, sorted({t for m in chosen for t in m[4]}))
    shutil.rmtree(baseline, ignore_errors=True)
    if not passed:
        print("the unmutated tests fail: fix them before reading anything into mutations", file=sys.stderr)
        return 1
    print(f"unmutated: the {len({t for m in chosen for t in m[4]})} test targets pass ({seconds:.0f} s)")
    for name, file, old, new, tests in chosen:
        tree = mutated_tree(file, old, new)
        passed, seconds = run_tests(tree, tests)
        shutil.rmtree(tree, ignore_errors=True)
        survivors += passed
        rows.append(
            f"| {name} | `{file}` | {', '.join(t.split('::')[-1].removeprefix('tests/') for t in tests)} | "
            f"{'SURVIVED' if passed else 'caught'} | {seconds:.0f} s |"
        )
        print(rows[-1], flush=True)
    print("\n| mutation | file | tests | result | time |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
