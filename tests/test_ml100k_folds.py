"""tests/benchmarks/ml100k.py: reading ML-100k from a wheel and cutting u1..u5 as mku.sh does,
on a tiny hand-made u.data-like table (no wheel, no network)."""
import hashlib
import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location("ml100k", Path(__file__).parent / "benchmarks" / "ml100k.py")
ml100k = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(ml100k)

# u.data-like rows (user, item, rating, timestamp) in file order, 10 rows: folds of 2 rows.
ROWS = [(3, 7, 4, 100), (1, 9, 5, 101), (2, 7, 3, 102), (1, 2, 1, 103), (3, 2, 2, 104),
        (2, 9, 4, 105), (1, 7, 3, 106), (3, 9, 5, 107), (2, 2, 2, 108), (1, 5, 4, 109)]
# Fold i's test part is rows [2(i-1), 2i); each part sorted by user, then item.
EXPECTED_TEST = {1: [(1, 9, 5, 101), (3, 7, 4, 100)],
                 2: [(1, 2, 1, 103), (2, 7, 3, 102)],
                 3: [(2, 9, 4, 105), (3, 2, 2, 104)],
                 4: [(1, 7, 3, 106), (3, 9, 5, 107)],
                 5: [(1, 5, 4, 109), (2, 2, 2, 108)]}
EXPECTED_BASE_1 = [(1, 2, 1, 103), (1, 5, 4, 109), (1, 7, 3, 106), (2, 2, 2, 108), (2, 7, 3, 102),
                   (2, 9, 4, 105), (3, 2, 2, 104), (3, 9, 5, 107)]


def _table(rows):
    user, item, rating, stamp = (np.array(column) for column in zip(*rows))
    return ml100k.Table(user.astype(np.int64), item.astype(np.int64), rating.astype(np.float64), stamp.astype(np.int64))


def _rows(table):
    return [(int(u), int(i), int(r), int(t)) for u, i, r, t in zip(*table)]


def _wheel(tmp_path, rows, header="\t".join(ml100k.HEADER)):
    text = (header + "\n" + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)).encode()
    path = tmp_path / "fake.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(ml100k.MEMBER, text)
    return path, hashlib.md5(text).hexdigest()


@pytest.mark.parametrize("fold", range(1, 6))
def test_mku_fold_cuts_fifths_in_file_order_sorted_by_user_item(fold):
    base, test = ml100k.mku_fold(_table(ROWS), fold)
    assert _rows(test) == EXPECTED_TEST[fold]
    assert sorted(_rows(base) + _rows(test)) == sorted(ROWS)
    if fold == 1:
        assert _rows(base) == EXPECTED_BASE_1


def test_mku_fold_rejects_bad_fold_and_uneven_table():
    with pytest.raises(ValueError, match="fold must be 1..5"):
        ml100k.mku_fold(_table(ROWS), 6)
    with pytest.raises(ValueError, match="11 rows"):
        ml100k.mku_fold(_table(ROWS + [(4, 1, 1, 110)]), 1)


def test_read_inter_checks_md5_header_and_counts(tmp_path):
    path, digest = _wheel(tmp_path, ROWS)
    table = ml100k.read_inter(path, md5=digest, counts=(10, 3, 4))
    assert _rows(table) == ROWS  # file order kept
    with pytest.raises(ValueError, match="md5"):
        ml100k.read_inter(path, counts=(10, 3, 4))  # ML-100k's md5
    with pytest.raises(ValueError, match=r"\(10, 3, 4\) ratings/users/items"):
        ml100k.read_inter(path, md5=digest)  # ML-100k's counts
    bad, bad_digest = _wheel(tmp_path, ROWS, header="user\titem\trating\ttime")
    with pytest.raises(ValueError, match="header"):
        ml100k.read_inter(bad, md5=bad_digest, counts=(10, 3, 4))


def test_fold_split_is_the_protocol_on_the_fold():
    table = _table(ROWS)
    split = ml100k.fold_split(table, 2, new_users=1 / 3, val=0.25, seed=0)
    base, test = ml100k.mku_fold(table, 2)
    held = split.new_users.user_ids
    assert len(held) == 1 and len(split.pretrain.user_ids) == 2
    assert not set(held) & set(split.pretrain.user_ids)

    def triples(ratings):
        users = ratings.user_ids[ratings.user_of_row()]
        return sorted(zip(users.tolist(), ratings.item_ids[ratings.items].tolist(), ratings.ratings.tolist()))

    def expected(part, users):
        return sorted((u, i, float(r)) for u, i, r, _ in _rows(part) if u in set(users.tolist()))

    known = split.pretrain.user_ids
    assert triples(split.pretrain.union(split.val)) == expected(base, known)
    assert triples(split.test) == expected(test, known)
    assert triples(split.new_fold_in) == expected(base, held)
    assert triples(split.new_test) == expected(test, held)
    # a quarter of each known user's base ratings, rounded per user, is validation
    assert split.val.counts.tolist() == np.round(split.pretrain.union(split.val).counts * 0.25).tolist()
    assert ml100k.fold_split(table, 2, new_users=0, seed=0).new_users is None


def test_wheel_path_names_a_missing_wheel(tmp_path):
    path, _ = _wheel(tmp_path, ROWS)
    assert ml100k.wheel_path(str(path)) == str(path)
    with pytest.raises(FileNotFoundError, match="recbole wheel not found: .*nowhere.whl"):
        ml100k.wheel_path(str(tmp_path / "nowhere.whl"))


@pytest.mark.parametrize("seed,first,total", [
    (0, [2, 8, 13, 19, 23, 25], 86401), (1, [4, 9, 10, 16, 23, 31], 92333), (2, [0, 4, 7, 20, 23, 47], 87392),
    (3, [1, 5, 6, 11, 16, 24], 92633), (4, [3, 10, 14, 17, 20, 34], 97123),
])
def test_held_out_users_is_the_draw_the_documented_numbers_used(seed, first, total):
    # Folds u1..u5 (seeds 0-4) held out these 189 of 943 user indices when docs/pipeline.md's ML-100k
    # tables were measured (retrain.data.sample_users(943, 0.2, seed) on main at 4b4ec9f, before
    # it chose users by id): the protocol must keep them.
    held = ml100k.held_out_users(943, 0.2, seed)
    assert len(held) == 189 and held[:6].tolist() == first and int(held.sum()) == total
    assert np.all(np.diff(held) > 0)
