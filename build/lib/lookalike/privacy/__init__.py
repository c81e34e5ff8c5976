"""Differential privacy: the budget ledger, dataset fingerprints and DP-SGD set-up."""
