"""The design card's layout: the configs live once, in a top-level ``configs/``, and the package
reaches them through a link (docs/layout.md); the wheel test proves the wheel ships them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lookalike.paths import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]


def test_the_configs_live_once_at_the_top_and_the_package_links_to_them():
    link = ROOT / "src" / "lookalike" / "conf"
    assert link.is_symlink() and link.resolve() == (ROOT / "configs").resolve()
    assert Path(CONFIG_DIR).resolve() == (ROOT / "configs").resolve()
    shipped = sorted(p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*.yaml"))
    assert Path("train.yaml") in shipped and Path("export.yaml") in shipped and len(shipped) > 20
    # No second copy in the tree: git tracks the link, and one train.yaml.
    tracked = subprocess.run(["git", "ls-files", "*train.yaml", "src/lookalike/conf"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(tracked) == ["configs/train.yaml", "src/lookalike/conf"]
