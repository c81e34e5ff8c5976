"""DP-SGD on Opacus: the privacy engine set-up, fused per-example clipping, and the noisy-sum
optimizer (noise added once, on rank 0, under torchrun)."""
