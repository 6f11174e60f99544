"""The one-file model (``RetrainResult.save`` / ``retrain.load``): what it holds, and serving in original ids."""
import dataclasses
import json
import pickle
import threading
import time

import numpy as np
import pytest
import torch

import retrain
from problems import BACKEND, random_head
from retrain import InputError, Ratings
from retrain.bundle import Recipe, ServedModel
from retrain.heads import Model
from retrain.hyperparams import HyperParams
from retrain.serving import fold_in
from retrain.shards import save_shards
from retrain.trainer import train_embeddings

HYP = HyperParams(model="matrix_factorization_4", learning_rate=0.05, regularization=1e-3, batch_size=4,
                  num_users=30, damping=0.0)  # what a bundle written before damping existed loads with
EPOCHS = 6


def _served(user_ids, item_ids, seed=0, hyp=HYP) -> tuple[ServedModel, Ratings]:
    """A served model whose user table is ``hyp``'s training of random ratings, with the given
    original ids; returns it and those ratings."""
    rng = np.random.default_rng(seed)
    head = dataclasses.replace(random_head("mf", n_items=len(item_ids), d=4, seed=seed), item_ids=item_ids)
    n = len(user_ids)
    users = np.repeat(np.arange(n), 6)
    items = np.concatenate([rng.choice(len(item_ids), 6, replace=False) for _ in range(n)])
    ratings = Ratings.from_coo(users, items, rng.integers(1, 6, len(users)), n_users=n, n_items=len(item_ids),
                               user_ids=user_ids, item_ids=item_ids)
    emb = train_embeddings(head, ratings, hyp, EPOCHS, backend=BACKEND)
    support = np.bincount(ratings.items, minlength=len(item_ids))
    return ServedModel(Model(head, emb, ratings.user_ids), Recipe(hyp, EPOCHS, (1.0, 5.0), 0.9, True), ratings,
                       support), ratings


ID_KINDS = {
    "int64": (1000 + 7 * np.arange(8), np.arange(20) * 3),
    "uint64": (np.array([2**63 + i for i in range(8)], dtype=np.uint64), np.arange(20, dtype=np.uint64) + np.uint64(2**64 - 30)),
    "str": (np.array([f"user-{i}" for i in range(8)]), np.array([f"film {i} é" for i in range(20)])),
}


@pytest.mark.parametrize("kind", ID_KINDS)
def test_save_load_roundtrip_keeps_ids_recipe_and_bytes(tmp_path, kind):
    served, ratings = _served(*ID_KINDS[kind])
    path, again = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    served.save(path)
    served.save(again)
    assert path.read_bytes() == again.read_bytes()  # byte-reproducible
    back = retrain.load(path)
    assert back.model.user_ids.tolist() == ratings.user_ids.tolist()
    assert back.head.item_ids.tolist() == ratings.item_ids.tolist()
    assert back.recipe == served.recipe and back.recipe.hyp.num_users == 30
    assert torch.equal(back.model.user_embeddings, served.model.user_embeddings)
    assert np.array_equal(back.seen.items, ratings.items) and np.array_equal(back.seen.indptr, ratings.indptr)
    # A fold-in of a table user's own ratings, in original ids, reproduces its row bitwise.
    one = ratings.select_users([3])
    folded = back.fold_in(one)
    assert folded.user_ids.tolist() == [ratings.user_ids[3]]
    assert torch.equal(folded.embeddings[0], served.model.user_embeddings[3])


def test_a_damped_recipe_round_trips_and_a_bundle_written_before_damping_loads_with_0(tmp_path):
    from safetensors.numpy import save_file
    from retrain.files import read_safetensors

    damped = HYP.replace(damping=2.0)
    served, ratings = _served(*ID_KINDS["int64"], hyp=damped)
    served.save(tmp_path / "damped.safetensors")
    back = retrain.load(tmp_path / "damped.safetensors")
    assert back.recipe.hyp.damping == 2.0 and back.recipe == served.recipe
    one = ratings.select_users([2])
    assert torch.equal(back.fold_in(one).embeddings[0], served.model.user_embeddings[2])  # the damped row, bitwise
    # The same file as an older version wrote it: no damping field in the recipe.
    tensors, metadata = read_safetensors(tmp_path / "damped.safetensors")
    recipe = json.loads(metadata["recipe"])
    del recipe["hyperparams"]["damping"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**metadata, "recipe": json.dumps(recipe)})
    old = retrain.load(tmp_path / "old.safetensors")
    assert old.recipe.hyp == HYP and old.recipe.hyp.damping == 0.0
    undamped = fold_in(served.head, one.with_items(served.head.item_ids), HYP, EPOCHS, backend=BACKEND)
    assert torch.equal(old.fold_in(one).embeddings, undamped)
    assert not torch.equal(undamped[0], served.model.user_embeddings[2])


@pytest.mark.parametrize("kind", ["int64", "str"])
def test_a_fold_in_with_ratings_far_outside_the_rating_range_names_the_user_and_value(kind):
    served, _ = _served(*ID_KINDS[kind])  # rating range (1, 5): far is below -3 or above 9
    user_ids, item_ids = ID_KINDS[kind]
    def request(values):
        return Ratings.from_ids(np.array([user_ids[0], user_ids[1], user_ids[1]]), item_ids[[0, 1, 2]],
                                np.array(values, dtype=np.float32))
    assert served.fold_in(request([4.0, -3.0, 9.0])).embeddings.shape == (2, 4)  # the edges are still accepted
    for values, value in (([4.0, 50.0, 3.0], "50"), ([4.0, 2.0, -3.5], "-3.5")):
        with pytest.raises(InputError, match=rf"user {user_ids[1]} has the rating {value}, far outside the "
                                             r"model's rating range \[1, 5\]"):
            served.fold_in(request(values))


def test_the_metadata_is_one_sorted_json_recipe(tmp_path):
    served, _ = _served(*ID_KINDS["int64"])
    served.save(tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    recipe = json.loads(header["__metadata__"]["recipe"])
    assert list(recipe) == sorted(recipe) and recipe["epochs"] == EPOCHS and recipe["contract"] == "1"
    assert recipe["hyperparams"]["num_users"] == 30 and recipe["rating_range"] == [1.0, 5.0]


def test_fold_in_drops_unknown_items_counts_them_and_flags_empty_users():
    pd = pytest.importorskip("pandas")
    served, ratings = _served(*ID_KINDS["int64"])
    known = [int(ratings.item_ids[i]) for i in ratings.items[:3]]
    frame = pd.DataFrame({"userId": [77, 77, 77, 77, 88], "movieId": known + [-5, -6], "rating": [4, 3, 5, 2, 1.0]})
    result = served.fold_in(frame)
    assert result.user_ids.tolist() == [77, 88] and result.dropped.tolist() == [1, 1] and result.n_dropped == 2
    assert result.no_known_items.tolist() == [False, True] and not result.diverged.any()
    # Oracle: the low-level fold-in of the known ratings, re-indexed by hand, with the recipe.
    by_hand = Ratings.from_ids([77, 77, 77], known, [4, 3, 5.0]).with_items(served.head.item_ids)
    assert torch.equal(result.embeddings[0], fold_in(served.head, by_hand, HYP, EPOCHS, backend=BACKEND)[0])
    init = train_embeddings(served.head, Ratings.from_ids([88], [0], [1.0]).with_items(served.head.item_ids,
                                                                                         drop_unknown=True), HYP, 0)
    assert torch.equal(result.embeddings[1], init[0])  # no known items: the init


def test_add_users_then_predict_and_recommend_in_original_ids():
    served, ratings = _served(*ID_KINDS["str"])
    item = ratings.item_ids
    new = Ratings.from_ids(["zoe"] * 4 + ["user-2"] * 2, [item[0], item[1], item[2], item[3], item[5], item[6]],
                           [5, 4, 1, 2, 3, 3.0])
    before = served.model.n_users
    result = served.add_users(new)
    assert served.model.n_users == before + 1 and served.model.user_ids[-1] == "zoe"
    row = served.model.user_index(["zoe", "user-2"])
    assert torch.equal(served.model.user_embeddings[row], result.embeddings[[1, 0]])  # user-2 sorts first
    # predict: original ids, clipped to the rating range; oracle: the head on the row by hand.
    pred = served.predict(["zoe", "zoe"], [item[7], item[0]], clip=False)
    e = served.model.user_embeddings[row[0]]
    by_hand = served.head.item_vectors[[7, 0]] @ e + served.head.item_bias[[7, 0]] + served.head.global_bias
    np.testing.assert_allclose(pred, by_hand.numpy(), rtol=1e-6)
    assert np.all((served.predict(["zoe"] * 20, item) >= 1) & (served.predict(["zoe"] * 20, item) <= 5))
    with pytest.raises(InputError, match="user id 'nobody'"):
        served.predict(["nobody"], [item[0]])
    with pytest.raises(InputError, match="item id 'no film'"):
        served.predict(["zoe"], ["no film"])
    # recommend: never the seen items; min_support leaves rare items out.
    top = served.recommend(["zoe", "user-2"], k=5)
    assert top.user_ids.tolist() == ["zoe", "user-2"] and top.item_ids.shape == (2, 5)
    assert not set(top.item_ids[0]) & set(item[[0, 1, 2, 3]]) and not set(top.item_ids[1]) & set(item[[5, 6]])
    support = served.item_support
    rare = set(item[support < 3])
    assert rare and not set(served.recommend(["zoe"], k=5, min_support=3).item_ids[0]) & rare


def test_add_users_from_two_threads_at_once_adds_both(monkeypatch):
    """Two threads adding other users at once: the table ends with both, rows and seen items as
    added one after the other.  The id concatenation is slowed so that the updates overlap (one
    thread's users were lost, and the other raised an InputError about a user index)."""
    served, ratings = _served(*ID_KINDS["int64"])
    item = ratings.item_ids
    results = [served.fold_in(Ratings.from_ids([user] * 2, item[first:first + 2], [4.0, 2.0]))
               for user, first in ((1, 0), (2, 2))]
    one_by_one, _ = _served(*ID_KINDS["int64"])
    for result in results:
        one_by_one.add_users(result)
    concatenate, errors = retrain.bundle.concatenate, []

    def slow(*args):
        time.sleep(0.1)
        return concatenate(*args)

    def add(result):
        try:
            served.add_users(result)
        except Exception as exc:  # collected: an exception in a thread would only be printed
            errors.append(exc)

    monkeypatch.setattr(retrain.bundle, "concatenate", slow)
    threads = [threading.Thread(target=add, args=(result,)) for result in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    order = np.argsort(served.model.user_ids)  # the order the threads ran in is not fixed
    expected = np.argsort(one_by_one.model.user_ids)
    assert served.model.user_ids[order].tolist() == one_by_one.model.user_ids[expected].tolist()
    assert torch.equal(served.model.user_embeddings[order], one_by_one.model.user_embeddings[expected])
    assert served.seen.nnz == one_by_one.seen.nnz == ratings.nnz + 4
    copied = pickle.loads(pickle.dumps(served))  # the lock stays behind: a copy has its own
    assert torch.equal(copied.model.user_embeddings, served.model.user_embeddings)
    copied.add_users(copied.fold_in(Ratings.from_ids([3, 3], item[4:6], [1.0, 5.0])))
    assert copied.model.n_users == served.model.n_users + 1


def test_recommend_and_save_during_add_users_see_the_table_before_it(monkeypatch, tmp_path):
    """A reader while ``add_users`` replaces a user sees the whole table before the update (or
    after it), never the new seen items beside the old rows: the update is paused where the old
    code had stored the new seen items but not yet the new table, and recommend and save run
    there (recommend left the user's new items out of the old embedding's list)."""
    served, ratings = _served(*ID_KINDS["int64"])
    user = served.model.user_ids[2]
    before, table = served.recommend([user], k=3), served.model.user_embeddings.clone()
    # Re-add the user with ratings on its current top items: the new seen items change its list.
    result = served.fold_in(Ratings.from_ids([user] * 3, before.item_ids[0], [5.0, 4.0, 3.0]))
    real_model, during = retrain.bundle.Model, {}

    def paused(*args):  # the new table is being made: read the served model from "another thread"
        during["top"] = served.recommend([user], k=3)
        served.save(tmp_path / "during.safetensors")
        return real_model(*args)

    monkeypatch.setattr(retrain.bundle, "Model", paused)
    served.add_users(result)
    assert during["top"].item_ids.tolist() == before.item_ids.tolist()
    assert np.array_equal(during["top"].scores, before.scores)
    saved = retrain.load(tmp_path / "during.safetensors")
    assert torch.equal(saved.model.user_embeddings, table)
    row = saved.model.user_index([user])
    assert np.array_equal(saved.seen.select_users(row).items, ratings.select_users(row).items)
    after = served.recommend([user], k=3)
    assert not set(after.item_ids[0]) & set(before.item_ids[0])  # the update itself took effect


def test_a_single_diverged_fold_in_is_an_error_and_a_batch_is_flagged():
    served, ratings = _served(*ID_KINDS["int64"])
    served.recipe = Recipe(HYP.replace(learning_rate=1e30, optimizer="sgd"), EPOCHS)
    one = ratings.select_users([0])
    with pytest.raises(InputError, match=r"the fold-in diverged for 1 of 1 users \(user ids 1000\)"):
        served.fold_in(one)
    batch = served.fold_in(ratings.select_users([0, 1]))
    assert batch.diverged.all()
    with pytest.raises(InputError, match="diverged.*not added"):
        served.add_users(batch)
    with pytest.raises(InputError, match="diverged"):
        fold_in(served.model, one, served.recipe.hyp, EPOCHS)  # the low-level one takes a Model too


def test_recommend_never_ranks_non_finite_embeddings():
    served, _ = _served(*ID_KINDS["int64"])
    emb = served.model.user_embeddings.clone()
    emb[2, 1] = float("nan")
    with pytest.raises(InputError, match="embeddings row 2 is not finite"):
        retrain.recommend(served.head, emb, 3)


def test_old_model_and_hyp_json_pair_still_loads_and_a_model_without_recipe_is_named(tmp_path):
    served, _ = _served(*ID_KINDS["int64"])
    path = tmp_path / "old.safetensors"
    served.model.save(path)  # Model.save: no recipe inside
    with pytest.raises(InputError, match="old.safetensors holds no recipe"):
        retrain.load(path)
    fields = {k: v for k, v in HYP.to_dict().items() if k != "damping"}  # written before damping existed
    (tmp_path / "old.safetensors.hyp.json").write_text(json.dumps(
        {"hyperparams": fields, "epochs": EPOCHS, "val_loss": 0.5}))
    back = retrain.load(path)
    assert back.recipe.hyp == HYP and back.recipe.epochs == EPOCHS and back.seen is None


def test_a_file_missing_a_tensor_is_named(tmp_path):
    from safetensors.numpy import save_file
    from retrain.files import read_safetensors

    served, _ = _served(*ID_KINDS["int64"])
    served.save(tmp_path / "m.safetensors")
    tensors, metadata = read_safetensors(tmp_path / "m.safetensors")
    del tensors["item_bias"]
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=metadata)
    with pytest.raises(InputError, match=r"broken.safetensors: the file lacks the tensor\(s\) \['item_bias'\]"):
        retrain.load(tmp_path / "broken.safetensors")


def test_the_cli_folds_in_string_user_ids_and_writes_them(tmp_path, capsys):
    from retrain.cli import main
    from retrain.ids import decode

    served, ratings = _served(*ID_KINDS["str"])
    served.save(tmp_path / "m.safetensors")
    items = ratings.item_ids
    (tmp_path / "new.csv").write_text(f"item,user,rating\n{items[0]},ann,4\n{items[3]},ann,2\n{items[5]},bo,5\n")
    code = main(["fold-in", "--model", str(tmp_path / "m.safetensors"), "--ratings", str(tmp_path / "new.csv"),
                 "--out", str(tmp_path / "emb.safetensors"), "--recommendations", str(tmp_path / "top.csv"),
                 "--k", "3", "--quiet"])
    assert code == 0, capsys.readouterr().err
    from retrain.files import read_safetensors
    tensors, _ = read_safetensors(tmp_path / "emb.safetensors")
    assert decode(tensors, "user_ids").tolist() == ["ann", "bo"]
    expected = served.fold_in(Ratings.from_ids(["ann", "ann", "bo"], items[[0, 3, 5]], [4, 2, 5.0]))
    np.testing.assert_array_equal(tensors["embeddings"], expected.embeddings.numpy())
    top = (tmp_path / "top.csv").read_text().splitlines()
    assert top[0] == "user_id,rank,item_id,score" and top[1].startswith("ann,1,film ")


# --------------------------------------------------------------------------- a bundle in shards
MIXED_UINT64 = (np.array([3, 2**63 + 5, 9, 2**64 - 1, 11, 4, 2**63, 8], dtype=np.uint64), np.arange(20) * 3)


@pytest.mark.parametrize("ids", [*ID_KINDS.values(), MIXED_UINT64], ids=[*ID_KINDS, "uint64 mixed"])
def test_shards_and_index_load_as_the_one_file_bundle(tmp_path, ids):
    served, ratings = _served(*ids)
    served.save(tmp_path / "one.safetensors")
    owner = np.array([1, 0, 0, 1, 1, 0, 1, 0]) if ids is not MIXED_UINT64 else np.array([0, 1, 0, 1, 0, 0, 1, 0])
    owner = np.where(np.arange(8) == 7, 3, owner)  # shard 2 holds nobody; shard 3 the last user alone
    save_shards(tmp_path / "m.safetensors", served.model, served.recipe, owner, ratings, served.item_support)
    index = json.loads((tmp_path / "m.safetensors").read_text())
    assert [(e["file"], e["users"]) for e in index["shards"]] == [
        (f"m.shard-{r:05d}-of-00004.safetensors", n) for r, n in enumerate(np.bincount(owner, minlength=4))]
    assert index["recipe"] == json.loads(served.recipe.to_json()) and index["n_users"] == 8
    one, back = retrain.load(tmp_path / "one.safetensors"), retrain.load(tmp_path / "m.safetensors")
    assert back.recipe == one.recipe
    assert torch.equal(back.model.user_embeddings, one.model.user_embeddings)
    assert back.model.user_ids.dtype == one.model.user_ids.dtype
    assert back.model.user_ids.tolist() == one.model.user_ids.tolist()
    assert back.head.item_ids.tolist() == one.head.item_ids.tolist()
    assert np.array_equal(back.seen.indptr, one.seen.indptr) and np.array_equal(back.seen.items, one.seen.items)
    assert np.array_equal(back.item_support, one.item_support)
    back.save(tmp_path / "again.safetensors")  # everything a bundle holds: the same bytes
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "one.safetensors").read_bytes()
    # Serving by original ids gives the same answers.
    users, items = ratings.user_ids[[6, 0, 3]], ratings.item_ids[[1, 2, 19]]
    assert np.array_equal(back.predict(users, items), one.predict(users, items))
    a, b = one.recommend(users, k=4, min_support=1), back.recommend(users, k=4, min_support=1)
    assert np.array_equal(a.item_ids, b.item_ids) and np.array_equal(a.scores, b.scores)
    new = ratings.select_users([3])
    assert torch.equal(back.fold_in(new).embeddings, one.fold_in(new).embeddings)


def test_a_missing_or_mismatched_shard_is_named(tmp_path):
    served, ratings = _served(*ID_KINDS["int64"])
    index = tmp_path / "m.safetensors"
    save_shards(index, served.model, served.recipe, np.arange(8) % 3, ratings, served.item_support)
    shard = tmp_path / "m.shard-00001-of-00003.safetensors"
    data = shard.read_bytes()
    shard.unlink()
    with pytest.raises(InputError, match=r"m.shard-00001-of-00003.safetensors: the shard 1 file .* is missing"):
        retrain.load(index)
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # damaged: the same size, another checksum
    with pytest.raises(InputError, match=r"m.shard-00001-of-00003.safetensors: the shard 1 file does not match"):
        retrain.load(index)
    # Shard 2's file under shard 1's name, and the index edited to match its size and checksum.
    shard.write_bytes((tmp_path / "m.shard-00002-of-00003.safetensors").read_bytes())
    entries = json.loads(index.read_text())
    entries["shards"][1] = {**entries["shards"][2], "file": shard.name}
    index.write_text(json.dumps(entries))
    with pytest.raises(InputError, match=r"m.shard-00001-of-00003.safetensors: not shard 1 of 3"):
        retrain.load(index)
    (tmp_path / "m.head.safetensors").unlink()
    with pytest.raises(InputError, match=r"m.head.safetensors: the head file .* is missing"):
        retrain.load(index)


@pytest.mark.parametrize("model_kind, request_ids", [
    ("int64", np.array(["alice", "bob"])),                         # strings into an integer table
    ("str", np.array([5, 6])),                                     # integers into a string table
    ("negative", np.array([2**63 + 1, 2**63 + 2], dtype=np.uint64)),  # no integer type holds both
])
def test_add_users_refuses_ids_of_another_kind_and_adds_nothing(model_kind, request_ids):
    # numpy's concatenation would turn the table's ids into strings (or floats) without a word.
    ids = ID_KINDS[model_kind] if model_kind != "negative" else (-1000 - np.arange(8), ID_KINDS["int64"][1])
    served, ratings = _served(*ids)
    known_item = ratings.item_ids[ratings.items[0]]
    request = Ratings.from_ids(request_ids, [known_item, known_item], [4.0, 3.0])
    before = served.model.user_ids.copy()
    with pytest.raises(InputError, match="user id"):
        served.add_users(request)
    assert served.model.user_ids.dtype == before.dtype and served.model.user_ids.tolist() == before.tolist()


@pytest.mark.parametrize("table, new", [
    (np.arange(8, dtype=np.uint64) + np.uint64(2**63), np.array([7])),       # uint64 table, an int64 id
    (1000 + 7 * np.arange(8), np.array([2**63 + 5], dtype=np.uint64)),      # int64 table, an id above int64
])
def test_add_users_keeps_exact_ids_when_int64_and_uint64_mix(table, new):
    served, ratings = _served(table, ID_KINDS["int64"][1])
    known_item = ratings.item_ids[ratings.items[0]]
    served.add_users(Ratings.from_ids(new, [known_item], [4.0]))
    assert served.model.user_ids.dtype == np.uint64  # numpy would give float64: 2**63 + 5 rounds
    assert [int(x) for x in served.model.user_ids] == [int(x) for x in table] + [int(new[0])]


@pytest.mark.parametrize("model_kind, item_ids", [("int64", ["0", "3"]), ("str", [0, 3])])
def test_fold_in_refuses_item_ids_of_another_kind(model_kind, item_ids):
    # Every rating would be "unknown": dropped, and the users served their init without an error.
    served, _ = _served(*ID_KINDS[model_kind])
    with pytest.raises(InputError, match="item id"):
        served.fold_in(Ratings.from_ids([1, 1], item_ids, [4.0, 5.0]))


def test_predict_names_an_id_kind_mismatch():
    served, _ = _served(*ID_KINDS["str"])
    with pytest.raises(InputError, match="user id '5' is an integer but the model's user ids are strings"):
        served.predict([5], ["film 0 é"])


def test_model_and_head_reprs_are_one_short_line():
    served, _ = _served(*ID_KINDS["str"])
    for thing, words in ((served.model, ["Model", "matrix_factorization_4", "8 users", "20 items"]),
                         (served.head, ["Head", "matrix_factorization_4", "20 items", "d=4"])):
        text = repr(thing)
        assert len(text) < 200 and "\n" not in text and all(w in text for w in words), text


def test_a_recipe_of_numpy_scalars_saves_as_the_plain_one(tmp_path):
    # numpy's scalars (an epoch count from an argmax, a loss from a mean) crashed the save: json
    # refuses them (TypeError).
    served, _ = _served(*ID_KINDS["int64"])
    plain = Recipe(HYP, EPOCHS, (1.0, 5.0), 0.5, True)
    served.recipe = Recipe(HYP, np.int64(EPOCHS), (np.float32(1), np.float64(5)), np.float32(0.5), np.bool_(True))
    assert served.recipe == plain and served.recipe.to_json() == plain.to_json()
    served.save(tmp_path / "m.safetensors")
    assert retrain.load(tmp_path / "m.safetensors").recipe == plain
    with pytest.raises(InputError, match="refit must be True or False, got 'no'"):
        Recipe(HYP, EPOCHS, refit="no")
