"""The vectorised id hash (privacy/id_hash.py): stable values, no collisions among millions of
ids, every byte counts, and the same hash however the ids are stored."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from lookalike.data.matching import split_draws
from lookalike.privacy import id_hash
from lookalike.privacy.fingerprint import UsersAccumulator, merge_parts, user_hashes, users_part

ODD = ["", "a", "a\0", "\0", "abcdefg", "abcdefgh", "abcdefghi", "é", "ü" * 9, "用户-42", "x" * 1000, "0123456789abcdef" * 4]


def test_the_hash_is_pinned_so_ledger_keys_never_change_silently():
    # The ledger stores these hashes: any change to the constants or the layout must fail here
    # (and then needs a new KEY_VERSION and a rekey path, fingerprint.py).
    assert user_hashes(pa.array(["", "u0000001", "用户-42"])).tolist() == [1249462527037490299, 3546000709279188254, 16972393609198309283]


def test_no_collisions_among_three_million_ids():
    n = 3_000_000
    ids = pa.array(np.char.add("user-", np.arange(n).astype(str)))
    assert np.unique(user_hashes(ids)).size == n


def test_every_byte_and_the_length_change_the_hash():
    for text in ODD[1:]:
        raw = text.encode()
        base = user_hashes(pa.array([raw.decode()]))[0]
        for i in range(len(raw)):
            changed = bytearray(raw)
            changed[i] ^= 0x01
            assert id_hash.id_hashes(pa.array([bytes(changed)], pa.binary()), 0) != id_hash.id_hashes(pa.array([raw], pa.binary()), 0), (text, i)
        assert user_hashes(pa.array([text + "\0"]))[0] != base
    values = user_hashes(pa.array(ODD))
    assert np.unique(values).size == len(ODD)


def test_the_hash_is_the_same_however_the_ids_are_stored(monkeypatch):
    ids = pa.array(ODD * 50 + [f"u{i}" for i in range(5000)])
    expected = user_hashes(ids)
    assert np.array_equal(user_hashes(ids.cast(pa.large_string())), expected)
    assert np.array_equal(user_hashes(pa.chunked_array([ids.slice(0, 7), ids.slice(7, 1000), ids.slice(1007)])), expected)
    assert np.array_equal(user_hashes(ids.slice(3)), expected[3:])
    assert np.array_equal(user_hashes(ids.dictionary_encode()), expected)
    # Small chunks take the ragged path (a 1000-byte id among short ones) and the grid path: same values.
    monkeypatch.setattr(id_hash, "CHUNK_BYTES", 64)
    monkeypatch.setattr(id_hash, "CHUNK_IDS", 5)
    assert np.array_equal(user_hashes(ids), expected)


def test_the_accumulator_gives_the_key_of_the_whole_table():
    ids = pa.array([f"u{i}" for i in range(10_000)])
    acc = UsersAccumulator()
    for start in range(0, 10_000, 3000):
        acc.add(ids.slice(start, 3000))
    assert merge_parts([acc.part()]).digest == merge_parts([users_part(ids)]).digest
    assert merge_parts([users_part(ids)]).digest != merge_parts([users_part(ids.slice(1))]).digest


def test_split_draws_are_uniform_and_independent():
    draws = split_draws(pa.array([f"u{i}" for i in range(200_000)]), 42)
    assert draws.min() >= 0 and draws.max() < 1
    for column in draws.T:
        counts = np.histogram(column, bins=20, range=(0, 1))[0]
        assert np.abs(counts - 10_000).max() < 500  # about 5 standard deviations
    assert abs(np.corrcoef(draws.T)[0, 1]) < 0.01
    assert not np.array_equal(split_draws(pa.array(["a", "b"]), 1), split_draws(pa.array(["a", "b"]), 2))


@pytest.mark.parametrize("streams", [1, 2])
def test_empty_input(streams):
    assert id_hash.id_hashes(pa.array([], pa.string()), 1, streams).shape == ((0,) if streams == 1 else (0, streams))


def test_a_shared_hash_is_checked_on_the_ids_not_taken_for_a_duplicate(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from lookalike.data.publisher import open_publisher
    from lookalike.data.publisher_ids import scan_users
    from lookalike.errors import DataError
    from lookalike.privacy import fingerprint

    real = fingerprint.id_hashes
    monkeypatch.setattr(fingerprint, "id_hashes", lambda ids, key: real(ids, key) % np.uint64(16))  # collisions everywhere
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(100)]}), tmp_path / "distinct.parquet", row_group_size=30)
    assert scan_users(open_publisher(tmp_path / "distinct.parquet"), "user_id", None, "p").users == 100
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(100)] + ["u7"]}), tmp_path / "twice.parquet", row_group_size=30)
    with pytest.raises(DataError, match="duplicate user ids"):
        scan_users(open_publisher(tmp_path / "twice.parquet"), "user_id", None, "p")
