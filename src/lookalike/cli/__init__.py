"""Command-line tools for the data owners and for users: ``lookalike-budget`` (budgets and rules in
the ledger) and ``lookalike-config`` (copy a shipped config out to start from)."""
