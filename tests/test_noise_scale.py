"""Every privacy mechanism's noise, measured: its realised standard deviation must match the
scale it states (docs/PRIVACY.md, "Noise"), parameter by parameter and table by table.

Checking that noise is "present" let an optimizer with a tenth of its noise, and one without
noise on any 2-D parameter, pass every DP test. Here each mechanism releases pure noise (a
zero signal) in thousands of coordinates, and the root mean square is compared with the stated
std. For n draws of N(0, s^2) the RMS has relative standard error 1/sqrt(2n); the band is six of
those, so a correct mechanism essentially never fails, while with n >= 2000 (band < 10%) a std
off by a factor 0.7 (sensitivity halved: 1/sqrt 2) or more is far outside it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lookalike.data.features import CategoricalFeature, FeatureSpec, MultiCategoricalFeature, NumericFeature
from lookalike.data.tensor_batches import TensorBatches, keep_batch
from lookalike.export.report import ReleasePlan
from lookalike.export.scoring import ExportOptions, score_population
from lookalike.model.centroid import CentroidSimilarity
from lookalike.privacy.mechanisms import gaussian_sigma, randomized_exclusion
from lookalike.training.centroid_fit import fit_centroid
from lookalike.training.dp_metrics import histogram, noisy_histograms
from lookalike.training.dp_sgd.engine import make_private
from lookalike.training.loop import _physical_batches
from lookalike.training.reach_score import noisy_total

BAND = 6.0  # standard errors


def assert_std(what: str, noise, stated: float, extra_variance: float = 0.0) -> None:
    """RMS of zero-mean ``noise`` against ``stated`` (plus a known independent variance)."""
    x = torch.as_tensor(noise).double().flatten()
    expected = math.sqrt(stated**2 + extra_variance)
    ratio = float(x.pow(2).mean().sqrt()) / expected
    tolerance = BAND / math.sqrt(2 * x.numel())
    assert abs(ratio - 1) < tolerance, f"{what}: noise std {ratio:.4f} x the stated {expected:.4g} (n={x.numel()}, band +-{tolerance:.3f})"
    print(f"{what}: realised/stated {ratio:.4f} (n={x.numel()}, band +-{tolerance:.3f})")


def analytic_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """delta of the Gaussian mechanism at this std (Balle & Wang 2018, Theorem 8), written out
    here so that the stated stds are checked against the definition, not against themselves."""
    phi = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))  # noqa: E731
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return phi(a - b) - math.exp(epsilon) * phi(-a - b)


# --- DP-SGD, all three grad_sample modes -------------------------------------------------------

Z, CLIP, ROWS = 1.3, 0.7, 8


class Tiny(nn.Module):
    """An embedding table, a 2-D weight and a 1-D bias of 2048 entries or more each."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(2048, 16)
        self.out = nn.Linear(16, 2048)

    def forward(self, ids, x):
        return self.out(self.emb(ids) + x)


def private_tiny(mode: str, noise_multiplier: float, ids=None, x=None, model=None):
    """Tiny through make_private, as the trainer sets it up: q = 1 (every row, one logical step
    an epoch), physical batches of 2 rows; random rows unless given."""
    model = Tiny() if model is None else model
    ids = torch.randint(0, 2048, (ROWS,)) if ids is None else ids
    data = [ids, torch.randn(ROWS, 16) if x is None else x, torch.zeros(ROWS, 2048)]
    loader = DataLoader(TensorBatches(data), batch_size=ROWS, collate_fn=keep_batch)
    privacy = SimpleNamespace(enabled=True, target_epsilon=4.0, max_grad_norm=CLIP, accountant="prv", grad_sample_mode=mode, secure_mode=False)
    return make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        loader,
        privacy,
        epochs=1,
        delta=1e-5,
        noise_multiplier=noise_multiplier,
        max_physical_batch=2,
        examples=ROWS,
    )


def dp_steps(private, loss, steps: int) -> list[dict[str, torch.Tensor]]:
    """``steps`` logical DP-SGD steps through the trainer's physical-batch split (2 rows at a
    time: three skipped steps, then the real one), each on per-example losses ``loss(output)``;
    after each, p.grad * expected batch size: the clipped sum plus the noise of that step."""
    optimizer, real, physical, released = private.optimizer, 0, 0, []
    for _ in range(steps):
        with _physical_batches(private.loader, optimizer, private, 2) as batches:
            for ids, x, _ in batches:
                optimizer.zero_grad(set_to_none=True)
                example_loss = loss(private.model(ids, x))
                if private.clipping is not None:
                    private.clipping.backward(example_loss)
                else:
                    (example_loss.sum() / max(ids.shape[0], 1)).backward()
                optimizer.step()
                real += not optimizer._is_last_step_skipped
                physical += 1
        released.append({name: p.grad.detach().clone() * optimizer.expected_batch_size for name, p in private.plain_model.named_parameters()})
    assert (physical, real, optimizer.expected_batch_size) == (steps * ROWS // 2, steps, ROWS)
    return released


def dp_step_noise(mode: str, steps: int = 1) -> list[dict[str, torch.Tensor]]:
    """The noise of each of ``steps`` logical steps on a zero loss: the clipped sum is zero, so
    p.grad * expected batch size is exactly the noise added to each parameter."""
    return dp_steps(private_tiny(mode, Z), lambda out: 0.0 * out.sum(1), steps)


@pytest.mark.parametrize("mode", ["fused", "hooks", "functorch"])
@pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")  # Opacus' functorch path, on CPU
def test_dp_sgd_noise_std_is_multiplier_times_clip_on_every_parameter(mode):
    """Noise N(0, (z C)^2) on the clipped sum, once per logical batch (not per physical batch:
    that would be 2x), on each parameter kind: embedding table, 2-D weight, 1-D bias, and at
    every step, not only the first (an optimizer that noised its first step alone would pass a
    one-step test): three steps, each measured on its own."""
    for step, noise in enumerate(dp_step_noise(mode, steps=3)):
        assert sorted(noise) == ["emb.weight", "out.bias", "out.weight"]
        for name, n in noise.items():
            assert_std(f"{mode} step {step} {name}", n, Z * CLIP)


@pytest.mark.parametrize("mode", ["fused", "hooks", "functorch"])
@pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")
def test_dp_sgd_clips_each_example_at_the_norm_its_noise_is_scaled_for(mode):
    """The noise is z x the optimizer's max_grad_norm; that is a sensitivity only if each
    example's contribution to the step is clipped at that same norm. Without noise, eight
    identical examples whose gradient norm is far above C sum to eight times the clipped
    gradient: the step's norm / 8 is the per-example norm the clipping really applied, and must
    be C (not 10 C, say, in the fused route alone)."""
    ids, x = torch.full((ROWS,), 7), torch.linspace(-1, 1, 16).repeat(ROWS, 1)  # every row the same example
    model = Tiny()
    (1000.0 * model(ids[:1], x[:1]).pow(2).sum()).backward()
    raw = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    model.zero_grad(set_to_none=True)
    private = private_tiny(mode, 0.0, ids, x, model)
    (clipped,) = dp_steps(private, lambda out: 1000.0 * out.pow(2).sum(1), steps=1)
    per_example = math.sqrt(sum(float(g.pow(2).sum()) for g in clipped.values())) / ROWS
    print(f"{mode}: raw norm {raw:.4g}, clipped {per_example:.6f}, max_grad_norm {CLIP}")
    assert raw > 100 * CLIP  # the clipping really bites, at C or at 10 C
    assert private.optimizer.max_grad_norm == CLIP and private.optimizer.noise_multiplier == 0.0
    assert per_example == pytest.approx(CLIP, rel=1e-4)


# --- Gaussian releases ------------------------------------------------------------------------


def test_evaluation_histogram_noise_matches_the_sensitivity_of_all_histograms():
    """One user moves one count in the positive and one in the negative histogram of every
    audience: L2 sensitivity sqrt(2 A), and the std calibrated to it is really (eps, delta)-DP."""
    audiences, epsilon, delta = 20, 1.0, 1e-6
    rng = np.random.default_rng(5)
    pos = [rng.normal(2, 3, 40) for _ in range(audiences)]
    neg = [rng.normal(-1, 3, 400) for _ in range(audiences)]
    noisy_pos, noisy_neg, sigma = noisy_histograms(pos, neg, epsilon, delta)
    sensitivity = math.sqrt(2 * audiences)
    assert sigma == gaussian_sigma(epsilon, delta, sensitivity)
    assert analytic_delta(sigma, epsilon, sensitivity) <= delta < analytic_delta(0.99 * sigma, epsilon, sensitivity)
    noise = [h - histogram(x) for h, x in zip(noisy_pos + noisy_neg, pos + neg)]
    assert_std("eval histograms", np.concatenate(noise), sigma)


def test_private_tuning_reach_counts_carry_multiplier_times_sqrt_audiences():
    """A user moves each audience's count by one: L2 sensitivity sqrt(A); the summed score adds
    A such draws, so its std is multiplier x A."""
    audiences, multiplier = 3, 16.0
    totals = np.array([noisy_total(np.full(audiences, 7.0), multiplier) for _ in range(3000)]) - 7.0 * audiences
    assert_std("reach score", totals, multiplier * audiences)


def test_report_counts_carry_the_plan_sigma_plus_rounding():
    """Released counts are count + N(0, sigma^2) rounded to an integer; rounding adds an almost
    independent uniform error of variance 1/12 (sigma >> 1 here). Large counts: nothing is
    suppressed."""
    sigma = gaussian_sigma(0.5, 1e-6, math.sqrt(3 * 7))  # as export's job sets plan.sigma
    assert analytic_delta(sigma, 0.5, math.sqrt(3 * 7)) <= 1e-6
    plan = ReleasePlan(trusted=False, sigma=sigma, noisy_segment_sizes=True, min_aggregation_size=100)
    released = plan.release(np.full(20000, 1_000_000))
    assert None not in released and all(isinstance(v, int) for v in released)
    assert_std("report counts", np.array(released, dtype=np.float64) - 1_000_000, sigma, extra_variance=1 / 12)


CENTROID_SPEC = FeatureSpec(
    id_column="id",
    numeric=[NumericFeature(f"x{i}", 0.0, 1.0, False) for i in range(40)],
    categorical=[CategoricalFeature(c, [f"v{i}" for i in range(58)]) for c in ("c", "d")],
    multi_categorical=[MultiCategoricalFeature("m", [f"t{i}" for i in range(58)], max_length=4)],
)
CENTROID_AUDIENCES = 50


def centroid_inputs(users: int = 100) -> list[torch.Tensor]:
    """Users of every kind, none of them a seed user: every audience's sums are zero."""
    numeric = torch.randn(users, CENTROID_SPEC.numeric_width)
    categorical = torch.randint(0, 60, (users, 2))
    multi = torch.randint(0, 60, (users, 4))
    return [numeric, categorical, multi, torch.zeros(users, CENTROID_AUDIENCES)]


def centroid_tables(model: CentroidSimilarity) -> dict[str, torch.Tensor]:
    return {
        "numeric": model.numeric,
        **{f"categorical {i}": t for i, t in enumerate(model.categorical)},
        **{f"multi {i}": t for i, t in enumerate(model.multi)},
    }


def test_centroid_noise_is_calibrated_multiplier_times_sensitivity_on_every_table():
    """fit_centroid's std is z * sensitivity, the sensitivity is sqrt(A (clip^2 + categoricals
    + multi-categoricals)) (a user's vector norm in every audience) and z makes the single
    Gaussian release (eps, delta)-DP at sensitivity 1; every table gets that std."""
    model = CentroidSimilarity(CENTROID_SPEC, CENTROID_AUDIENCES)
    cfg = SimpleNamespace(privacy=SimpleNamespace(enabled=True, accountant="prv", target_epsilon=2.0))
    result = fit_centroid(model, centroid_inputs(), cfg, delta=1e-6)
    sensitivity = math.sqrt(CENTROID_AUDIENCES * (3.0**2 + 2 + 1))
    assert model.sensitivity() == pytest.approx(sensitivity)
    assert analytic_delta(result.noise_multiplier, 2.0, 1.0) <= 1.01e-6
    for name, table in centroid_tables(model).items():
        assert table.numel() >= 2000
        assert_std(f"centroid {name}", table, result.noise_multiplier * sensitivity)


# --- randomised response ----------------------------------------------------------------------


def test_randomized_exclusion_flips_membership_at_one_over_one_plus_e_eps():
    """Seed users stay out with probability e^eps/(1+e^eps); others are left out with
    1/(1+e^eps). Binomial band of six standard errors on 200k users per group."""
    epsilon, n = 1.0, 200_000
    is_seed = np.repeat([True, False], n)
    excluded = randomized_exclusion(is_seed, epsilon, np.random.default_rng())
    flip = 1 / (1 + math.exp(epsilon))
    band = BAND * math.sqrt(flip * (1 - flip) / n)
    for group, flipped in (("seed", ~excluded[:n]), ("non-seed", excluded[n:])):
        rate = flipped.mean()
        print(f"randomized exclusion {group}: flip rate {rate:.4f} / {flip:.4f} = {rate / flip:.4f}")
        assert abs(rate - flip) < band, f"{group}: flip rate {rate:.4f}, want {flip:.4f} +- {band:.4f}"


# --- none of it replayable from the logged seed -----------------------------------------------


class ConstantScore(nn.Module):
    """Every user scores the same: which users the export excludes is then the coin flips alone."""

    def forward(self, numeric, categorical):
        return torch.zeros(numeric.shape[0], 1)


def excluded_by_export(folder) -> list[str]:
    """Users left out of an export segment with randomised seed exclusion, through
    score_population, which draws the coins from its own generator."""
    ids = [f"u{i:04d}" for i in range(2000)]
    pq.write_table(pa.table({"id": ids, "x": np.zeros(2000)}), folder / "publisher.parquet", row_group_size=500)
    spec = FeatureSpec(id_column="id", numeric=[NumericFeature("x", 0.0, 1.0, False)])
    options = ExportOptions(include_seed=False, exclusion="randomized", exclusion_epsilon=1.0, min_score=None, holdout_fraction=0.0, split_seed=0)
    state, _ = score_population(
        ds.dataset(folder / "publisher.parquet"),
        None,
        spec,
        ConstantScore(),
        torch.device("cpu"),
        {"a": 0},
        {"a": pa.array(ids[:1000])},
        2000,
        options,
        256,
        str(folder),
    )
    kept = set(state["a"].segment.result()[2].to_pylist())
    return sorted(set(ids) - kept)


@pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")
def test_two_runs_with_the_same_seed_draw_different_noise(tmp_path):
    """The logged seed fixes torch's and numpy's global generators; a mechanism drawing from
    them could be replayed and its noise subtracted. Each mechanism runs twice after seeding
    both globally: every one must give a different release."""

    def centroid():
        model = CentroidSimilarity(CENTROID_SPEC, CENTROID_AUDIENCES)
        numeric, categorical, multi, labels = centroid_inputs()
        model.fit(numeric, categorical, [multi], labels, sigma=1.0)
        return torch.cat([t.flatten() for t in centroid_tables(model).values()])

    hist = [np.zeros(10)]
    mechanisms = {
        **{f"DP-SGD {mode}": lambda mode=mode: torch.cat([n.flatten() for n in dp_step_noise(mode)[0].values()]) for mode in ("fused", "hooks", "functorch")},
        "centroid": centroid,
        "eval histograms": lambda: np.concatenate(noisy_histograms(hist, hist, 1.0, 1e-6)[0]),
        "report counts": lambda: np.array(
            ReleasePlan(trusted=False, sigma=3.0, noisy_segment_sizes=True, min_aggregation_size=10).release(np.full(50, 1000.0))
        ),
        "randomised exclusion": lambda: excluded_by_export(tmp_path),
    }
    replayable = []
    for name, release in mechanisms.items():
        outputs = []
        for _ in range(2):
            torch.manual_seed(0)
            np.random.seed(0)
            outputs.append(np.asarray(release()))
        assert outputs[0].size > 0
        if outputs[0].shape == outputs[1].shape and np.array_equal(outputs[0], outputs[1]):
            replayable.append(name)
    assert not replayable, f"same seed, same noise: {replayable}"


def test_under_torchrun_rank_0_alone_adds_noise():
    """The clipped sums are all-reduced, then averaged: noise from every rank would add
    sqrt(world) times the stated std (and the accounting would not know)."""
    from lookalike.parallel.world import World
    from lookalike.training.dp_sgd.noisy_optimizer import DistributedNoisySumOptimizer

    stds = []
    for rank in (0, 1, 2):
        model = torch.nn.Linear(4, 2)
        opt = DistributedNoisySumOptimizer(
            torch.optim.SGD(model.parameters(), lr=1.0),
            noise_multiplier=Z,
            max_grad_norm=CLIP,
            expected_batch_size=8,
            loss_reduction="mean",
            world=World(rank, 3, rank),
        )
        stds.append(opt.noise_std())
    assert stds == [pytest.approx(Z * CLIP), 0.0, 0.0]
