"""Which per-example gradient route a DP run takes: the fused clipping or Opacus' per-sample one.

``privacy.grad_sample_mode=fused`` (the default) is a preference, not an order: the fused
clipping has closed forms for nn.Linear, nn.Embedding and the audience tower only, so a model
with any other trainable layer (your own tower's cross layer holding an ``nn.Parameter``, say)
takes Opacus' ``hooks`` route, whose registered grad samplers cover the known layers and whose
functorch fallback covers the rest. ``hooks`` or ``functorch`` set by hand are taken as given.
Both routes clip each example's whole gradient to ``max_grad_norm`` and add the same noise, so
the accounting is the same; the per-sample route is slower and keeps no lazy-noise tables.

The route also sets how many examples go through the model at once when
``trainer.physical_batch_size`` is null. The per-sample route stores a gradient per example and
parameter (124k floats each at the reference model, half a megabyte), so it takes 512 at a time.
The fused clipping keeps only each layer's input and backprop, what a non-private step keeps, so
it takes the whole logical batch up to 8,192: the batch rule's batches run to thousands, and cut
into 512s they took about 1.5x as long (a 2,800-example batch on the demo's mix, 2 CPU cores).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lookalike.model.audience import AudienceTower

PER_SAMPLE = "hooks"  # the route a model the fused clipping does not cover takes
# Exact types: a subclass may compute its output differently from the closed form's assumption.
COVERED = (nn.Linear, nn.Embedding, AudienceTower)
# trainer.physical_batch_size null: the fused route takes this many at once, the per-sample routes (hooks, functorch) the other
FUSED_PHYSICAL_BATCH, PER_SAMPLE_PHYSICAL_BATCH = 8192, 512


@dataclass(frozen=True)
class GradSampleRoute:
    mode: str  # fused, hooks or functorch: what privacy.grad_sample_mode_used logs
    reason: str  # why, for the run's log line

    def describe(self) -> str:
        return f"{self.mode} ({self.reason})"

    def physical_batch(self, configured: int | None) -> int:
        """The largest batch pushed through the model at once: the setting, or the route's own."""
        if configured is not None:
            return int(configured)
        return FUSED_PHYSICAL_BATCH if self.mode == "fused" else PER_SAMPLE_PHYSICAL_BATCH


def uncovered_layer(model: nn.Module) -> str | None:
    """The first trainable layer fused clipping has no closed form for, as "'name' (Type)"."""
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if type(module) not in COVERED or (isinstance(module, nn.Embedding) and module.max_norm is not None):
            return f"'{name}' ({type(module).__name__})"
    return None


def structural_route(model: nn.Module, configured: str) -> GradSampleRoute:
    """The route from the model's layer types alone (training/tower_checks.py also runs the
    fused clipping on a made-up batch, which catches a covered layer used in an uncovered way)."""
    if configured != "fused":
        return GradSampleRoute(configured, f"privacy.grad_sample_mode={configured}")
    layer = uncovered_layer(model)
    if layer is not None:
        return GradSampleRoute(PER_SAMPLE, f"layer {layer} is not one the fused clipping covers")
    return GradSampleRoute("fused", "every trainable layer is one the fused clipping covers")
