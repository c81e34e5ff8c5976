"""`lookalike-budget`: what the privacy ledger holds, per dataset fingerprint.

    lookalike-budget --ledger outputs/privacy_ledger.sqlite
    lookalike-budget --ledger outputs/privacy_ledger.sqlite --json
    lookalike-budget --ledger outputs/privacy_ledger.sqlite set-budget 5c62ccb5 8.0
    lookalike-budget --ledger outputs/privacy_ledger.sqlite preview --epsilon 1.2
"""

from __future__ import annotations

import argparse
import json
import sys

from lookalike.errors import LookalikeError
from lookalike.privacy.ledger import Ledger, runs_fitting

DEFAULT_LEDGER = "outputs/privacy_ledger.sqlite"


def format_table(rows: list[dict]) -> str:
    # spent + reserved is what summing would charge; "charged" composes the finished Gaussian
    # runs (PRV) and is what the ledger enforces, so remaining = budget - charged.
    header = ("fingerprint", "budget", "spent", "reserved", "charged", "remaining", "delta spent", "entries")
    lines = [header] + [
        (r["fingerprint"][:12], f"{r['budget_epsilon']:.4g}", f"{r['spent_epsilon']:.4g}", f"{r['reserved_epsilon']:.4g}",
         f"{r['charged_epsilon']:.4g}", f"{r['remaining_epsilon']:.4g}", f"{r['spent_delta']:.3g}", str(r["runs"]))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lookalike-budget", description="Show or change privacy budgets in a lookalike ledger.")
    parser.add_argument("--ledger", default=DEFAULT_LEDGER, help=f"ledger file (the run's ledger.path; default {DEFAULT_LEDGER})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = parser.add_subparsers(dest="command")
    setter = sub.add_parser("set-budget", help="change the total epsilon of one dataset (a decision for the data owners)")
    setter.add_argument("fingerprint", help="the fingerprint, or a unique prefix of it")
    setter.add_argument("epsilon", type=float)
    setter.add_argument("--delta", type=float, default=None)
    preview = sub.add_parser("preview", help="how many more runs at a given epsilon the remaining budget covers")
    preview.add_argument("--epsilon", type=float, required=True,
                         help="epsilon per run: privacy.target_epsilon + evaluation.epsilon (+ export's report_epsilon)")
    args = parser.parse_args(argv)
    ledger = Ledger(args.ledger)
    try:
        if args.command == "set-budget":
            if args.epsilon <= 0:
                parser.error("epsilon must be positive")
            ledger.set_budget(args.fingerprint, args.epsilon, args.delta)
        if args.command == "preview" and not args.epsilon > 0:
            parser.error("--epsilon must be positive")
        rows = [s.to_dict() for s in ledger.status()]
    except LookalikeError as exc:
        print(f"lookalike-budget: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.command == "preview":
        for row in rows:
            # A new run is reserved at face value on top of the charge (it joins the composition
            # once it finishes).
            row["runs_that_fit"] = runs_fitting(row["remaining_epsilon"], args.epsilon)
        if not args.json:
            for row in rows:
                print(f"{row['fingerprint'][:12]}: {row['runs_that_fit']} more run(s) at epsilon {args.epsilon:g} "
                      f"(remaining {row['remaining_epsilon']:.4g} of {row['budget_epsilon']:.4g})")
            return
    if args.json:
        print(json.dumps(rows, indent=1))
    elif rows:
        print(format_table(rows))
    else:
        print(f"ledger '{args.ledger}' holds no budgets yet")


if __name__ == "__main__":
    main()
