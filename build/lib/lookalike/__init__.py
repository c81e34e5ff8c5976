"""lookalike: a privacy-preserving lookalike-audience trainer (two towers, DP-SGD, a budget ledger)."""

__version__ = "0.1.0"
