"""MovieLens loaders: each format from a small file the test writes, and ml-latest-small if present."""
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
