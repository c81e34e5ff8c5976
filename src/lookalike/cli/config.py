"""`lookalike-config`: the configs the package ships, and a copy of one to start your own from
(as torchtune's `tune cp` does).

    lookalike-config list                                        # every shipped config
    lookalike-config cp experiment/demo my_configs/experiment/mine.yaml
    lookalike-train --config-dir my_configs experiment=mine      # your folder beside the shipped one
    lookalike-config reference                                   # every key, its type, default and meaning (Markdown)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from lookalike.paths import CONFIG_DIR


def shipped() -> list[str]:
    root = Path(CONFIG_DIR)
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lookalike-config", description="List the shipped configs or copy one out to edit.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every shipped config (group/name)")
    sub.add_parser("path", help="the folder of the shipped configs")
    sub.add_parser("reference", help="every key of lookalike-train and lookalike-export: type, default, meaning (Markdown)")
    cp = sub.add_parser("cp", help="copy a shipped config to a file of yours")
    cp.add_argument("name", help="group/name as `list` shows it, e.g. experiment/demo or train")
    cp.add_argument("destination", type=Path, help="a .yaml file, or a folder (the file keeps its name)")
    cp.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(shipped()))
        return
    if args.command == "path":
        print(CONFIG_DIR)
        return
    if args.command == "reference":
        from lookalike.cli.config_reference import reference_markdown  # imports both applications: only here

        print(reference_markdown(), end="")
        return
    name = args.name.removesuffix(".yaml")
    if name not in shipped():
        print(f"lookalike-config: error: no shipped config '{args.name}'; `lookalike-config list` shows them", file=sys.stderr)
        sys.exit(2)
    source = Path(CONFIG_DIR) / f"{name}.yaml"
    target = args.destination / source.name if args.destination.is_dir() else args.destination
    if target.exists() and not args.force:
        print(f"lookalike-config: error: '{target}' exists; pass --force to replace it", file=sys.stderr)
        sys.exit(2)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"copied {name} to {target}")


if __name__ == "__main__":
    main()
