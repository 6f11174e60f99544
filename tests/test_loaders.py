"""MovieLens loaders: each format from a small file the test writes, and ml-latest-small if present."""
import re
from pathlib import Path

import numpy as np
import pytest

from retrain import InputError
from retrain.movielens import load_movielens

ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small" / "ratings.csv"
ROWS = [(5, 10, 4.0), (3, 10, 3.5), (5, 2, 1.0), (9, 7, 5.0)]


def _check(r):
    assert r.user_ids.tolist() == [3, 5, 9] and r.item_ids.tolist() == [2, 7, 10]
    assert r.indptr.tolist() == [0, 1, 3, 4]
    assert r.items.tolist() == [2, 0, 2, 1]  # user 5: item 2 (index 0) before item 10 (index 2)
    assert r.ratings.tolist() == [3.5, 1.0, 4.0, 5.0]


def test_ml100k_u_data(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("".join(f"{u}\t{i}\t{int(r)}\t881250949\n" for u, i, r in ROWS).replace("\t3\t", "\t3.5\t"))
    r = load_movielens(path)
    assert r.nnz == 4 and r.user_ids.tolist() == [3, 5, 9]


def test_ml1m_ratings_dat(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("".join(f"{u}::{i}::{r}::978300760\n" for u, i, r in ROWS))
    _check(load_movielens(path))


def test_ml_latest_ratings_csv(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},964982703\n" for u, i, r in ROWS))
    _check(load_movielens(path))


def test_missing_and_malformed(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_movielens(tmp_path / "nope.csv")
    bad = tmp_path / "ratings.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,3,4\n1,x,3,4\n")
    with pytest.raises(InputError, match=r"ratings.csv:3: malformed"):
        load_movielens(bad)


@pytest.mark.movielens
def test_ml_latest_small():
    if not ML_SMALL.exists():
        pytest.skip(f"{ML_SMALL} not present")
    r = load_movielens(ML_SMALL)
    assert (r.n_users, r.n_items, r.nnz) == (610, 9724, 100836)
    assert np.isclose(r.ratings.mean(), 3.5016, atol=1e-3)


def test_header_columns_are_read_by_name(tmp_path, caplog):
    path = tmp_path / "swapped.csv"  # items first: reading by position would swap users and items
    path.write_text("movieId,userId,rating\n" + "".join(f"{i},{u},{r}\n" for u, i, r in ROWS))
    with caplog.at_level("INFO", logger="retrain.movielens"):
        _check(load_movielens(path))
    assert "users from column 'userId', items from 'movieId', ratings from 'rating'" in caplog.text
    plain = tmp_path / "plain.csv"
    plain.write_text("weight,rating,item,user\n2,4,b,alice\n1,3,a,bob\n")
    r = load_movielens(plain)
    assert r.user_ids.tolist() == ["alice", "bob"] and r.item_ids.tolist() == ["a", "b"]
    assert r.weights.tolist() == [2.0, 1.0]


def test_ids_in_files_are_exact(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text(f"user,item,rating\n{2**63 + 1},1,4\n{2**64 - 1},2,3\n")
    assert load_movielens(path).user_ids.tolist() == [2**63 + 1, 2**64 - 1]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("user,item,rating\n1,1,4\n1.5,2,3\n")
    with pytest.raises(InputError, match=r"mixed.csv:3: malformed id: column 'user' has '1.5'"):
        load_movielens(mixed)
    missing = tmp_path / "nouser.csv"
    missing.write_text("uid,item,rating\n1,1,4\n")
    with pytest.raises(InputError, match=r"no user column: expected one of \['userId', 'user'\]"):
        load_movielens(missing)


@pytest.mark.parametrize("first,second", [("007", "7"), ("+7", "7"), ("7_0", "70"), ("-0", "0")])
def test_an_integer_id_is_written_one_way_so_two_ids_never_merge(tmp_path, first, second):
    # Python's int() reads both texts as one integer: these two users used to become one.
    path = tmp_path / "r.csv"
    path.write_text(f"user,item,rating\n{first},1,4\n{second},2,3\n")
    with pytest.raises(InputError, match=rf"r.csv:3: malformed id: column 'user' has '{second}' but line 2 has "
                                         rf"'{re.escape(first)}': ids must be all integers"):
        load_movielens(path)
    path.write_text(f"user,item,rating\n{first},1,4\n{first}x,2,3\n")  # as strings they stay apart, exactly
    assert load_movielens(path).user_ids.tolist() == sorted([first, f"{first}x"])


def test_what_only_python_reads_as_a_number_is_a_malformed_rating(tmp_path):
    path = tmp_path / "r.csv"
    for text in ("1_0", "\u0663"):  # float() reads 10 and 3
        path.write_text(f"user,item,rating\n1,1,4\n1,2,{text}\n", encoding="utf-8")
        with pytest.raises(InputError, match=rf"r.csv:3: malformed rating '{text}'"):
            load_movielens(path)


def test_a_byte_order_mark_bytes_that_are_not_utf8_and_a_repeated_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"\xef\xbb\xbfuserId,movieId,rating\r\n1,2,4\r\n")  # Excel's UTF-8 CSV
    r = load_movielens(path)
    assert r.user_ids.tolist() == [1] and r.item_ids.tolist() == [2] and r.ratings.tolist() == [4.0]
    path.write_bytes(b"\xef\xbb\xbf1,2,4\n3,2,5\n")  # no header: the mark is not part of the first id
    assert load_movielens(path).user_ids.tolist() == [1, 3]
    # Latin-1 ids used to load as surrogates, and the model's save crashed after the whole pretraining.
    path.write_bytes(b"user,item,rating\nbob,x,3\nren\xe9,x,4\n")
    with pytest.raises(InputError, match=r"r.csv:3: malformed id: column 'user' has .* not UTF-8"):
        load_movielens(path)
    path.write_bytes(b"user,item,rating,comment\nbob,x,3,caf\xe9\n")  # in a column that is not read: no harm
    assert load_movielens(path).user_ids.tolist() == ["bob"]
    path.write_text("user,item,rating,rating\n1,2,3,4\n")  # which one? it used to take the first
    with pytest.raises(InputError, match=r"r.csv:1: the header names the column 'rating' 2 times"):
        load_movielens(path)


def test_quoted_csv_fields_are_read_as_csv_writes_them(tmp_path):
    # A quoted id used to keep its quotes, and one holding a comma split into two fields.
    import csv

    rows = [["user", "item", "rating"], ["smith, j", 'the "best"', "4"], ["plain", "x", "3.5"]]
    path = tmp_path / "r.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_MINIMAL).writerows(rows)
    r = load_movielens(path)
    assert r.user_ids.tolist() == ["plain", "smith, j"] and r.item_ids.tolist() == ['the "best"', "x"]
    assert r.ratings.tolist() == [3.5, 4.0]
    with open(path, "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows([["userId", "movieId", "rating"], ["1", "10", "4"]])
    r = load_movielens(path)
    assert r.user_ids.tolist() == [1] and r.item_ids.tolist() == [10] and r.ratings.tolist() == [4.0]


def test_an_empty_id_is_a_malformed_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\nalice,x,3\n,y,4\n")  # it loaded as the user ""
    with pytest.raises(InputError, match=r"r.csv:3: malformed id: column 'user' is empty"):
        load_movielens(path)
