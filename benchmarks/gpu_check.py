"""`make gpu-check`: train and export on CUDA when a GPU is visible, printing throughput.

Runs the two benchmarks with ``--device cuda``: training throughput at equal batch (non-private
and fused DP on the demo's feature mix, a 1M-value list column at vocabulary 5,000 vs 1,000,000,
and a 1M-value categorical: the sparse-table routes), then export at 1M and 10M users. Without a GPU it says so and exits 0: the CPU numbers come from the same
scripts without ``--device``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible; nothing to check here (CPU: benchmarks/train_throughput.py, benchmarks/export_scaling.py)")
        return
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    # Equal batch (1,024) in both routes; the reference mix, then a 1M-value list column at
    # vocabulary 5,000 vs 1,000,000, then a 1M-value categorical (the sparse-table routes).
    subprocess.run([sys.executable, str(HERE / "train_throughput.py"), "--device", "cuda", "--repeats", "1"], check=True)
    subprocess.run([sys.executable, str(HERE / "export_scaling.py"), "--device", "cuda", "--sizes", "1000000", "10000000"], check=True)


if __name__ == "__main__":
    main()
