"""The small console tools: hashing ids, reading the budget, generating demo data."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.dataset as ds
import pytest

from lookalike.cli.budget import main as budget_main
from lookalike.data.hashing import hash_file, hash_id, normalise, read_salt
from lookalike.errors import DataError, LookalikeError
from lookalike.privacy.ledger import Ledger
from tests.conftest import reserve_on

SALT = b"0123456789abcdef-shared-secret"


def test_normalisation_makes_both_sides_agree():
    assert normalise("  Alice@Example.COM ", "auto") == "alice@example.com"
    assert normalise("+44 (0)20 7946-0000", "phone") == "+440207946" + "0000"
    assert normalise(" ID-42 ", "id") == "ID-42"
    assert hash_id("Alice@Example.com", SALT) == hash_id(" alice@example.com", SALT)
    assert hash_id("alice@example.com", SALT) != hash_id("alice@example.com", SALT + b"x")
    assert len(hash_id("u1", SALT)) == 64


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_hash_file_keeps_format_and_other_columns(tmp_path, suffix):
    src = tmp_path / f"seed{suffix}"
    if suffix == ".csv":
        src.write_text("user_id,audience\nA@x.com,a\n007,b\n")
    elif suffix == ".jsonl":
        src.write_text('{"user_id": "A@x.com", "audience": "a"}\n{"user_id": "007", "audience": "b"}\n')
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"user_id": ["A@x.com", "007"], "audience": ["a", "b"]}), src)
    out = tmp_path / f"hashed{suffix}"
    assert hash_file(src, out, "user_id", SALT, "auto") == 2
    from lookalike.data.seed import read_seed

    seeds = read_seed(str(out), "user_id", "audience")
    assert seeds["a"].tolist() == [hash_id("a@x.com", SALT)] and seeds["b"].tolist() == [hash_id("007", SALT)]


def test_salt_must_be_long_enough(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOKALIKE_SALT", "short")
    with pytest.raises(LookalikeError, match="at least 16 bytes"):
        read_salt("LOOKALIKE_SALT", None)
    (tmp_path / "salt").write_bytes(SALT + b"\n")
    assert read_salt("UNSET_VAR", tmp_path / "salt") == SALT


def test_hash_cli_end_to_end(tmp_path):
    src, out = tmp_path / "ids.csv", tmp_path / "out.csv"
    src.write_text("user_id\nBob@Mail.com\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lookalike.data.hashing", str(src), str(out), "--kind", "email"],
        env={"LOOKALIKE_SALT": SALT.decode(), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines()[1].strip('"') == hash_id("bob@mail.com", SALT)
    missing = subprocess.run([sys.executable, "-m", "lookalike.data.hashing", str(src), str(out)], env={"PATH": ""}, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "LOOKALIKE_SALT" in missing.stderr


def test_budget_cli_table_and_json(tmp_path, capsys):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    done = reserve_on(ledger, "ab" * 32, 2.0, 1e-6, budget=5, budget_delta=None, kind="train", description="t")
    ledger.record_spent(done, 1.5)
    reserve_on(ledger, "ab" * 32, 1.0, 1e-6, budget=5, budget_delta=None, kind="train", description="t")
    budget_main(["--ledger", str(path), "--json"])
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["budget_epsilon"], row["spent_epsilon"], row["reserved_epsilon"], row["remaining_epsilon"]) == (5, 1.5, 1.0, 2.5)
    assert row["charged_epsilon"] == 2.5 and row["composition"].startswith("summed")  # no Gaussian record to compose
    budget_main(["--ledger", str(path)])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["fingerprint", "budget", "spent", "reserved", "charged", "remaining", "delta", "spent", "entries"]
    assert table[1].split()[:6] == ["abababababab", "5", "1.5", "1", "2.5", "2.5"]
    budget_main(["--ledger", str(path), "set-budget", "abab", "7"])
    assert "7" in capsys.readouterr().out.splitlines()[1].split()
    with pytest.raises(SystemExit) as exit_info:
        budget_main(["--ledger", str(tmp_path / "none.sqlite")])
    assert exit_info.value.code == 2 and not (tmp_path / "none.sqlite").exists()


def test_budget_preview_counts_runs_that_fit(tmp_path, capsys):
    path = tmp_path / "ledger.sqlite"
    entry = reserve_on(Ledger(path), "cd" * 32, 1.5, 1e-6, budget=5)
    Ledger(path).record_spent(entry, 1.4)
    budget_main(["--ledger", str(path), "preview", "--epsilon", "1.2"])
    assert capsys.readouterr().out.strip() == "cdcdcdcdcdcd: 3 more run(s) at epsilon 1.2 (remaining 3.6 of 5)"
    budget_main(["--ledger", str(path), "--json", "preview", "--epsilon", "1.8"])
    assert json.loads(capsys.readouterr().out)[0]["runs_that_fit"] == 2


def test_demo_data_has_planted_structure(demo_dir):
    table = ds.dataset(demo_dir / "publisher", partitioning="hive").to_table()
    assert table.num_rows == 4000 and {"user_id", "age", "device", "interests", "cohort"} <= set(table.column_names)
    truth = json.loads((demo_dir / "ground_truth.json").read_text())
    seed = [json.loads(line) for line in (demo_dir / "seed.jsonl").read_text().splitlines()]
    luxury_seed = {r["user_id"] for r in seed if r["audience"] == "luxury"}
    assert luxury_seed - set(truth["luxury"]) and all(u.startswith("x") for u in luxury_seed - set(truth["luxury"]))
    incomes = dict(zip(table.column("user_id").to_pylist(), table.column("income_k").to_pylist()))
    luxury_income = sum(incomes[u] for u in truth["luxury"]) / len(truth["luxury"])
    assert luxury_income > 1.5 * sum(incomes.values()) / len(incomes)  # the planted signal is there


def test_hashing_changes_the_id_column_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_SALT", SALT.decode())
    src = tmp_path / "in.csv"
    src.write_text('user_id,zip,joined,note\nBob@Mail.com,01234,2025-01-02T03:04:05Z,"a, b"\nann@x.org,00007,,\n')
    hash_file(src, tmp_path / "out.csv", "user_id", SALT, "email")
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == "user_id,zip,joined,note"
    assert rows[1] == f'{hash_id("bob@mail.com", SALT)},01234,2025-01-02T03:04:05Z,"a, b"' and rows[2].endswith(",00007,,")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"user_id": "u1", "ts": "2025-01-02T03:04:05", "zip": "01234", "n": 3}\n')
    hash_file(jsonl, tmp_path / "out.jsonl", "user_id", SALT, "id")
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {"user_id": hash_id("u1", SALT), "ts": "2025-01-02T03:04:05", "zip": "01234", "n": 3}
    blank = tmp_path / "blank.csv"
    blank.write_text("user_id,zip\nu1,1\n  ,2\n")
    with pytest.raises(DataError, match="row 3 has an empty 'user_id'"):
        hash_file(blank, tmp_path / "blank_out.csv", "user_id", SALT, "id")
    assert not (tmp_path / "blank_out.csv").exists() and not (tmp_path / "blank_out.csv.tmp").exists()


@pytest.mark.parametrize(("prefix", "message"), [("", "the fingerprint is empty"), ("%", "fingerprint '%' matches 0 budgets"), ("a_", "matches 0 budgets")])
def test_set_budget_refuses_an_empty_or_wildcard_prefix(tmp_path, capsys, prefix, message):
    """`set-budget ""` renewed the only budget there was: a prefix must name one."""
    path = tmp_path / "ledger.sqlite"
    reserve_on(Ledger(path), "ab" * 32, 1.0, 1e-6, budget=5)
    with pytest.raises(SystemExit) as exit_info:
        budget_main(["--ledger", str(path), "set-budget", prefix, "9"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err
    assert [s.budget_epsilon for s in Ledger(path).status()] == [5]


def test_json_lines_keep_every_other_field_as_written(tmp_path):
    """Decoding and re-encoding each line retyped the other fields (1.10 -> 1.1, 1e2 -> 100.0,
    1E400 -> Infinity, not JSON) and hashed the numeric id 0.10 as "0.1"."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rest = ', "price": 1.10, "n": 1e2, "big": 1E400, "tiny": -0.0, "s": "caf\\u00e9 \\"x\\"", "deep": {"user_id": [1.50, null]}}'
    lines = ['{"user_id": 0.10' + rest + "\r\n", '{ "audience" :"a" ,"user_id":"A\\u0040x.com" }\n', '{"user_id": 7}']
    src.write_text("".join(lines), newline="")
    assert hash_file(src, out, "user_id", SALT, "auto") == 3
    got = out.read_bytes().decode().split("\n")
    assert got[0] == f'{{"user_id": "{hash_id("0.10", SALT)}"' + rest + "\r"
    assert got[1] == f'{{ "audience" :"a" ,"user_id":"{hash_id("a@x.com", SALT)}" }}'  # the string's value, escapes decoded
    assert got[2:] == [f'{{"user_id": "{hash_id("7", SALT)}"}}', ""]
    for line, refused in (('{"user_id": true}', "is true, not a string or a number"), ('{"user_id": "a", "user_id": "b"}', "has 'user_id' 2 times")):
        src.write_text(line + "\n")
        with pytest.raises(DataError, match=refused):
            hash_file(src, tmp_path / "refused.jsonl", "user_id", SALT, "id")
        assert not (tmp_path / "refused.jsonl").exists()
