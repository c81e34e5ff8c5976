"""`lookalike-budget`: the data owners' command for budgets and clean-room rules.

lookalike-budget --ledger outputs/privacy_ledger.sqlite                      # what is held
lookalike-budget --ledger L create --publisher data/demo/publisher --epsilon 5 --allow-trusted-evaluation
lookalike-budget --ledger L attach 5c62ccb5 --publisher /data/publisher-2026-12   # a grown table
lookalike-budget --ledger L set-budget 5c62ccb5 8.0                           # renew
lookalike-budget --ledger L rekey --publisher /data/publisher-2026-12         # a ledger of an older version
lookalike-budget --ledger L set-rules 5c62ccb5 --min-aggregation-size 200
lookalike-budget --ledger L preview --epsilon 1.2
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from lookalike.data.publisher import open_publisher
from lookalike.data.publisher_ids import IdChecks, id_batches, scan_users
from lookalike.errors import DataError, LookalikeError
from lookalike.privacy.budgets import attach_snapshot, create_budget, create_budget_if_missing, default_delta, set_budget, set_rules
from lookalike.privacy.fingerprint import merge_parts, user_hashes, v1_user_hashes
from lookalike.privacy.ledger import Ledger, runs_fitting
from lookalike.privacy.rekey import TableHashes, rekey
from lookalike.privacy.rules import Rules
from lookalike.runtime.credentials import check_command_line
from lookalike.runtime.room import room_ledger

DEFAULT_LEDGER = "outputs/privacy_ledger.sqlite"
RULE_FLAGS = (
    "min_matching_seed_size",
    "min_aggregation_size",
    "allow_list_output",
    "max_epsilon_per_run",
    "allow_trusted_evaluation",
    "allow_non_private",
    "allow_seed_in_output",
    "max_delta_per_release",
)

# The smallest per-run epsilon preview counts runs for (the ledger's tolerance is 1e-9).
MIN_PREVIEW_EPSILON = 1e-6


def format_table(rows: list[dict]) -> str:
    # spent + reserved is what summing would charge; "charged" composes the finished Gaussian
    # runs (PRV) and is what the ledger enforces, so remaining = budget - charged.
    header = ("fingerprint", "budget", "spent", "reserved", "charged", "remaining", "delta spent", "entries")
    lines = [header] + [
        (
            r["fingerprint"][:12],
            f"{r['budget_epsilon']:.4g}",
            f"{r['spent_epsilon']:.4g}",
            f"{r['reserved_epsilon']:.4g}",
            f"{r['charged_epsilon']:.4g}",
            f"{r['remaining_epsilon']:.4g}",
            f"{r['spent_delta']:.3g}",
            str(r["runs"]),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-matching-seed-size", type=int, help="refuse seeds matching fewer publisher users (default 500)")
    parser.add_argument("--min-aggregation-size", type=int, help="no released count or segment below this (default 100)")
    parser.add_argument("--allow-list-output", action=argparse.BooleanOptionalAction, help="user lists in exports (default yes)")
    parser.add_argument("--max-epsilon-per-run", type=float, help="largest epsilon one run may reserve (default: the budget)")
    parser.add_argument(
        "--allow-trusted-evaluation", action=argparse.BooleanOptionalAction, help="exact seed-derived metrics (default no: synthetic or public data only)"
    )
    parser.add_argument("--allow-non-private", action=argparse.BooleanOptionalAction, help="privacy.enabled=false runs (default no)")
    parser.add_argument("--max-delta-per-release", type=float, help="largest delta of one release (default 1/(10 R) for the run's R publisher users)")
    parser.add_argument(
        "--allow-seed-in-output",
        action=argparse.BooleanOptionalAction,
        help="export.include_seed_in_output=true: segments that list the matched seed users first (default no)",
    )


def publisher_users(path: str, id_column: str):
    """The users key of a publisher table (every row, whatever a run's window)."""
    dataset = open_publisher(path)
    if id_column not in dataset.schema.names:
        raise DataError(f"publisher data '{path}' has no id column '{id_column}': pass --id-column")
    return merge_parts([scan_users(dataset, id_column, None, path)])


def table_hashes(path: str, id_column: str) -> TableHashes:
    """A publisher table's users under both versions of the hash (the old one is slow: a Python
    call per id), streamed a batch at a time."""
    dataset = open_publisher(path)
    if id_column not in dataset.schema.names:
        raise DataError(f"publisher data '{path}' has no id column '{id_column}': pass --id-column")
    v1, v2 = [], []
    checks = IdChecks(id_column, path)
    for ids in id_batches(dataset, id_column, None):
        checks.add(ids)
        v1.append(v1_user_hashes(ids))
        v2.append(user_hashes(ids))
    checks.finish()
    return TableHashes(np.concatenate(v1 or [np.zeros(0, np.uint64)]), np.concatenate(v2 or [np.zeros(0, np.uint64)]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike-budget", description="The data owners' privacy budgets and clean-room rules.")
    p.add_argument(
        "--ledger",
        default=None,
        help=f"ledger file or database URL without a password (the runs' ledger.path; default {DEFAULT_LEDGER}, "
        "or LOOKALIKE_LEDGER_URL's, or the room's with LOOKALIKE_ROOM set)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = p.add_subparsers(dest="command")
    create = sub.add_parser("create", help="a budget and rules for the users of a publisher table")
    create.add_argument("--publisher", required=True, help="the publisher table (Parquet file or folder)")
    create.add_argument("--id-column", default="user_id")
    create.add_argument("--epsilon", type=float, required=True, help="total epsilon for these users")
    create.add_argument("--delta", type=float, default=None, help="total delta (default: 1/R for the table's R users)")
    create.add_argument("--if-missing", action="store_true", help="do nothing when a budget already covers these users (decided under the ledger's lock)")
    _rule_options(create)
    attach = sub.add_parser("attach", help="add a publisher table (a new snapshot, a grown table) to an existing budget")
    attach.add_argument("fingerprint", help="the budget's fingerprint, or a unique prefix of it")
    attach.add_argument("--publisher", required=True, help="the publisher table (Parquet file or folder)")
    attach.add_argument("--id-column", default="user_id")
    rekey_cmd = sub.add_parser("rekey", help="re-key the datasets an older version stored, from the publisher tables they were made from")
    rekey_cmd.add_argument("--publisher", required=True, help="a table the datasets were created or attached from (Parquet file or folder)")
    rekey_cmd.add_argument("--id-column", default="user_id")
    setter = sub.add_parser("set-budget", help="change (renew) the total epsilon of one budget")
    setter.add_argument("fingerprint", help="the fingerprint, or a unique prefix of it")
    setter.add_argument("epsilon", type=float)
    setter.add_argument("--delta", type=float, default=None)
    rules = sub.add_parser("set-rules", help="change the clean-room rules of one budget")
    rules.add_argument("fingerprint", help="the fingerprint, or a unique prefix of it")
    _rule_options(rules)
    preview = sub.add_parser("preview", help="how many more runs at a given epsilon the remaining budget covers")
    preview.add_argument(
        "--epsilon",
        type=float,
        required=True,
        help="epsilon per run: privacy.target_epsilon + evaluation.epsilon + privacy.size_epsilon (+ export's report_epsilon)",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    check_command_line("lookalike-budget", argv)  # --ledger with a password: LOOKALIKE_LEDGER_URL or a PGPASSFILE instead
    args = parser().parse_args(argv)
    try:
        ledger = Ledger(room_ledger(args.ledger, DEFAULT_LEDGER))  # with a room file, the room's ledger only
        changes = {k: getattr(args, k, None) for k in RULE_FLAGS}
        if args.command == "create":
            key = publisher_users(args.publisher, args.id_column)
            rules = Rules().with_changes(**changes)
            delta = default_delta(key.users) if args.delta is None else args.delta
            if args.if_missing:
                fingerprint, created = create_budget_if_missing(ledger, key, args.epsilon, delta, rules)
                if not created:
                    print(f"budget {fingerprint[:12]} already covers these users; nothing changed")
                    return
            else:
                fingerprint = create_budget(ledger, key, args.epsilon, delta, rules)
            print(f"budget {fingerprint[:12]} created for {key.users} users in ledger '{ledger.path}'")
        elif args.command == "attach":
            fingerprint = attach_snapshot(ledger, args.fingerprint, publisher_users(args.publisher, args.id_column))
            print(f"budget {fingerprint[:12]} now covers '{args.publisher}' too")
            return
        elif args.command == "rekey":
            done, left = rekey(ledger, table_hashes(args.publisher, args.id_column))
            if done == 0 and left:
                raise LookalikeError(
                    f"'{args.publisher}' holds all the users of none of the {left} dataset(s) to re-key: give the table each was created or attached from"
                )
            print(f"re-keyed {done} dataset(s) with '{args.publisher}'; {left} left" + (" (re-key them from their own tables)" if left else ""))
            return
        elif args.command == "set-budget":
            set_budget(ledger, args.fingerprint, args.epsilon, args.delta)
        elif args.command == "set-rules":
            set_rules(ledger, args.fingerprint, **changes)
        if args.command == "preview" and not args.epsilon > 0:
            raise LookalikeError("--epsilon must be positive")
        if args.command == "preview" and args.epsilon < MIN_PREVIEW_EPSILON:
            # remaining / 5e-324 is infinite: no count of runs to show, and no run reserves so little
            raise LookalikeError(f"--epsilon {args.epsilon:g} is too small to mean anything: give what one run reserves (at least {MIN_PREVIEW_EPSILON:g})")
        rows = [s.to_dict() for s in ledger.status()] if args.command != "create" else []
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
                print(
                    f"{row['fingerprint'][:12]}: {row['runs_that_fit']} more run(s) at epsilon {args.epsilon:g} "
                    f"(remaining {row['remaining_epsilon']:.4g} of {row['budget_epsilon']:.4g})"
                )
            return
    if args.command == "create":
        return
    if args.json:
        print(json.dumps(rows, indent=1))
    elif rows:
        print(format_table(rows))
        if args.command == "set-rules":
            print("rules: " + json.dumps(next(r["rules"] for r in rows if r["fingerprint"].startswith(args.fingerprint))))
    else:
        print(f"ledger '{ledger.path}' holds no budgets yet")


if __name__ == "__main__":
    main()
