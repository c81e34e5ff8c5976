"""Examples of code you bring to lookalike-train (docs/your-own-model.md).

Run them from the repository root with the root first on the path: opacus installs a top-level
``examples`` package of its own, which would otherwise be found instead of this one.
"""
