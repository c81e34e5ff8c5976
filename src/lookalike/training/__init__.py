"""The training application: ``lookalike-train`` (train.py, the recipe), its typed config, the
ledger lifecycle of a run, data preparation, the DP-SGD loop and held-out evaluation."""
