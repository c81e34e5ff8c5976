"""What a model must pass before a run reserves anything, checked on a few made-up users.

Built-in models are the package's and pass by construction: they get the layer check only. Your
own tower (model/custom.py) gets all of these, each refused in one line naming the layer or
weight, so that no ledger charge and no MLflow run happen on a tower DP-SGD cannot train:

- no layer that mixes the examples of a batch (BatchNorm, even without weights: in training it
  normalises each user by the batch's statistics), nor one Opacus' validators refuse;
- the tower returns [batch, output_dim], each row a function of its own user alone;
- the route (dp_sgd/route.py): the fused clipping when every trainable layer is one it covers
  *and* it runs on a made-up batch (a covered layer used twice, or nn.Linear on [batch, tokens,
  features], is not), else Opacus' per-sample route, whose dry run must give every trainable
  weight a per-example gradient (a weight used outside its module's forward gets none).

The made-up users are a function of the feature spec alone (public): a refusal reads no data.
"""

from __future__ import annotations

import copy

import torch
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lookalike.data.features import MISSING_INDEX, OOV_INDEX, FeatureSpec
from lookalike.errors import ConfigError, one_line
from lookalike.training.dp_sgd.fused_clipping import FusedClipping
from lookalike.training.dp_sgd.route import PER_SAMPLE, GradSampleRoute, structural_route

ROWS = 3  # made-up users per check: enough for two of them to differ in every input


def made_up_inputs(spec: FeatureSpec, rows: int = ROWS) -> list[torch.Tensor]:
    """Encoded inputs of ``rows`` users that differ in every column, from the spec alone."""
    numeric = torch.linspace(-1.0, 1.0, rows * spec.numeric_width).reshape(rows, spec.numeric_width)
    row = torch.arange(rows)

    def ids(cardinality: int, shift: int = 0) -> torch.Tensor:
        known = cardinality - 2  # ids 2.. are the vocabulary; 1 is out of vocabulary
        return 2 + (row + shift) % known if known > 0 else torch.full((rows,), OOV_INDEX)

    categorical = torch.stack([ids(f.cardinality) for f in spec.categorical], 1) if spec.categorical else torch.zeros(rows, 0, dtype=torch.long)
    multi = []
    for f in spec.multi_categorical:
        bag = torch.full((rows, f.max_length), MISSING_INDEX)
        bag[:, 0] = ids(f.cardinality)
        if f.max_length > 1:
            bag[:, 1] = ids(f.cardinality, 1)
        multi.append(bag)
    return [numeric, categorical, *multi]


def refuse_batch_mixing(model: nn.Module, key: str) -> None:
    """No BatchNorm anywhere, and nothing Opacus' validators refuse, naming the layer."""
    for name, module in model.named_modules():
        what = f"layer '{name}' ({type(module).__name__}) is not compatible with DP-SGD"
        if isinstance(module, _BatchNorm):
            raise ConfigError(
                key,
                f"{what}: it normalises each user by the statistics of the whole batch, so one user's output depends on the others': "
                "use LayerNorm or GroupNorm",
            )
        validate = ModuleValidator.VALIDATORS.get(type(module))
        errors = validate(module) if validate is not None and any(p.requires_grad for p in module.parameters()) else []
        if errors:
            raise ConfigError(key, f"{what}: {one_line(errors[0]).split('. ')[0]} (opacus.validators.ModuleValidator.fix replaces it)")


def check_tower_output(tower: nn.Module, spec: FeatureSpec, output_dim: int, key: str) -> None:
    """[batch, output_dim], finite, and each row the same whether its user is alone or in a batch."""
    inputs = made_up_inputs(spec)
    was_training = tower.training
    tower.eval()  # no dropout: the rows are compared exactly
    try:
        with torch.no_grad():
            together = tower(*inputs)
            if not isinstance(together, torch.Tensor) or tuple(together.shape) != (ROWS, output_dim):
                shape = list(together.shape) if isinstance(together, torch.Tensor) else type(together).__name__
                raise ConfigError(key, f"forward returned {shape} for {ROWS} users: it must return [batch, model.output_dim] = [{ROWS}, {output_dim}]")
            alone = torch.cat([tower(*(t[i : i + 1] for t in inputs)) for i in range(ROWS)])
    except ConfigError:
        raise
    except Exception as exc:  # the tower's own error on well-formed inputs
        raise ConfigError(key, f"forward failed on made-up inputs of the feature spec's shapes ({one_line(exc)})") from None
    finally:
        tower.train(was_training)
    if not torch.allclose(together, alone, rtol=1e-4, atol=1e-5):
        raise ConfigError(
            key, "one user's embedding depends on the other users in its batch, which breaks DP-SGD's per-example bound: compute each row from its own inputs"
        )


def grad_sample_route(model: nn.Module, spec: FeatureSpec, configured: str, key: str) -> GradSampleRoute:
    """The route the model trains on, tried on made-up users; a model neither route can train is refused."""
    route = structural_route(model, configured)
    inputs = made_up_inputs(spec)
    if route.mode == "fused":
        trial = copy.deepcopy(model).train()
        clipping = FusedClipping(trial, 1.0)
        try:
            clipping.backward(trial(*inputs).sum(1))
            return route
        except Exception as exc:  # a covered layer used in a way the closed forms do not cover
            problem = str(exc).split(": ", 1)[1] if isinstance(exc, ConfigError) else one_line(exc)
            route = GradSampleRoute(PER_SAMPLE, f"the fused clipping fails on it: {problem.split('; use')[0]}")
        finally:
            clipping.detach()
    _check_per_sample(model, inputs, route.mode, key)
    return route


def _check_per_sample(model: nn.Module, inputs: list[torch.Tensor], mode: str, key: str) -> None:
    """Opacus' per-sample gradients on a copy: every trainable weight must get one per user."""
    trial = copy.deepcopy(model).train()
    for name, module in trial.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)) and list(module.buffers()):
            raise ConfigError(key, f"layer '{name}' ({type(module).__name__}) trains and holds buffers, which Opacus' per-sample route does not support")
    try:
        wrapped = GradSampleModule(trial, batch_first=True, loss_reduction="sum", force_functorch=mode == "functorch")
        wrapped(*inputs).sum().backward()
    except Exception as exc:  # Opacus' functorch fallback on a layer it cannot replay (several inputs, say)
        raise ConfigError(
            key,
            f"Opacus' per-sample gradients fail on it ({one_line(exc)}): "
            "keep weights that are not nn.Linear/nn.Embedding in a module whose forward takes one tensor",
        ) from None
    for name, param in trial.named_parameters():
        sample = getattr(param, "grad_sample", None)
        if param.requires_grad and (sample is None or tuple(sample.shape) != (len(inputs[0]), *param.shape)):
            raise ConfigError(
                key,
                f"weight '{name}' gets no per-example gradient from Opacus (is it used outside its module's forward?): "
                "use it inside the forward of the module that owns it",
            )
