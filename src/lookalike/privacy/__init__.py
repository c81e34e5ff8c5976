"""Differential privacy, the bottom layer: mechanisms (Gaussian, randomised response, OS-entropy
noise, Poisson sampling), accounting, the budget ledger with its owners' budgets and rules, the
users' fingerprint that keys it, and the one-run audit's bound."""
