"""Bad inputs and faults for ids, data values, serving and files (issue 12, classes 1 and 3).

Each case is a row of a table: what is called, the error type, and what the message must name.
CLI cases also check the exit status and that no file in the folder was written or changed.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import retrain
from problems import random_head
from retrain import InputError, Ratings
from retrain.bundle import Recipe, ServedModel
from retrain.cli import main
from retrain.files import atomic_write_bytes, atomic_write_files, read_safetensors, remove_stale_temporaries
from retrain.heads import Head, Model
from retrain.hyperparams import HyperParams
from retrain.movielens import load_movielens
from retrain.protocol import protocol_split
from retrain.serving import fold_in, recommend
from retrain.trainer import train_embeddings

HYP = HyperParams(model="matrix_factorization_4", learning_rate=0.05, regularization=1e-3, batch_size=4, num_users=9)


@pytest.fixture(scope="module")
def served():
    head = dataclasses.replace(random_head("mf", n_items=12, d=4, seed=3), item_ids=np.arange(12) + 100)
    ratings = Ratings.from_coo(np.repeat(np.arange(9), 4), np.arange(36) % 12, np.arange(36) % 5 + 1.0,
                               n_users=9, n_items=12, user_ids=np.arange(9) + 10, item_ids=head.item_ids)
    emb = train_embeddings(head, ratings, HYP, 4)
    return ServedModel(Model(head, emb, ratings.user_ids), Recipe(HYP, 4, (1.0, 5.0)), ratings,
                       np.bincount(ratings.items, minlength=12))


def _csv(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _hand_built(ratings, field, row, value):
    """``ratings`` rebuilt through the dataclass constructor (no checks) with one bad entry."""
    arrays = {name: getattr(ratings, name).copy() for name in ("indptr", "items", "ratings", "weights")}
    arrays[field][row] = value
    return Ratings(**arrays, user_ids=ratings.user_ids, item_ids=ratings.item_ids)


def _nan_row(model):
    emb = model.user_embeddings.clone()
    emb[1] = float("nan")
    return emb


def _without(tmp_path, served, tensor):
    served.save(tmp_path / "m.safetensors")
    tensors, metadata = read_safetensors(tmp_path / "m.safetensors")
    from safetensors.numpy import save_file
    save_file({k: v for k, v in tensors.items() if k != tensor}, str(tmp_path / "m.safetensors"), metadata=metadata)
    return tmp_path / "m.safetensors"


def _bad_recipe(tmp_path, served):
    served.save(tmp_path / "m.safetensors")
    tensors, metadata = read_safetensors(tmp_path / "m.safetensors")
    from safetensors.numpy import save_file
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={**metadata, "recipe": "{not json"})
    return tmp_path / "m.safetensors"


def _other_models_result(served, d, item_ids):
    """A fold-in of user 99 by a model of embedding size ``d`` over the items ``item_ids``."""
    head = dataclasses.replace(random_head("mf", n_items=len(item_ids), d=d, seed=5), item_ids=item_ids)
    other = ServedModel(Model(head, np.zeros((0, d), np.float32), np.zeros(0, np.int64)),
                        Recipe(HYP.replace(model=head.name), 2))
    return other.fold_in(Ratings.from_ids([99, 99], item_ids[:2], [4.0, 2.0]))


def _edited(tmp_path, served, tensors=None, metadata=None, recipe=None):
    """``served`` saved, then rewritten with some tensors, metadata or recipe entries replaced
    (None: removed)."""
    served.save(tmp_path / "m.safetensors")
    old_tensors, old_metadata = read_safetensors(tmp_path / "m.safetensors")
    entry = {**json.loads(old_metadata["recipe"]), **(recipe or {})}
    merged = lambda old, new: {k: v for k, v in {**old, **(new or {})}.items() if v is not None}
    from safetensors.numpy import save_file
    save_file(merged(old_tensors, tensors), str(tmp_path / "m.safetensors"),
              metadata=merged(old_metadata, {**(metadata or {}), "recipe": json.dumps(entry)}))
    return tmp_path / "m.safetensors"


# name: (call(tmp_path, served), error type, regex the message must match)
API_CASES = {
    # ids
    "float user id": (lambda t, s: Ratings.from_ids([1, 1.5], [1, 2], [3, 4]), InputError, r"user_ids .* row 1 has 1.5"),
    "NaN item id": (lambda t, s: Ratings.from_ids([1, 2], [1, np.nan], [3, 4]), InputError, r"item_ids .* row 1 has nan"),
    "None user id": (lambda t, s: Ratings.from_ids(np.array([None, 1], dtype=object), [1, 2], [3, 4]), InputError,
                     r"user_ids .* row 0 has None"),
    "mixed int and str ids": (lambda t, s: Ratings.from_ids(np.array([1, "b"], dtype=object), [1, 2], [3, 4]),
                              InputError, r"all integers or all strings: row 1 has 'b'"),
    "id beyond uint64": (lambda t, s: Ratings.from_ids(np.array([2**64], dtype=object), [1], [3]), InputError,
                         r"row 0 has 18446744073709551616"),
    "negative and huge ids together": (lambda t, s: Ratings.from_ids(np.array([-1, 2**63], dtype=object), [1, 2],
                                                                     [3, 4]), InputError, r"row 1 has 9223372036854775808"),
    "bool ids": (lambda t, s: Ratings.from_ids(np.array([True, False]), [1, 2], [3, 4]), InputError, r"bool"),
    "float id in a head": (lambda t, s: Head.user_item_biases([0.1, 0.2], 3.0, item_ids=[1, 2.5]), InputError,
                           r"item_ids .* row 1 has 2.5"),
    "uint64 index above int64": (lambda t, s: Ratings.from_coo(np.array([2**63], dtype=np.uint64), [0], [1.0]),
                                 InputError, r"user index out of range: row 0"),
    # values
    "rating beyond float32": (lambda t, s: Ratings.from_ids([1, 2], [1, 2], [3, 1e39]), InputError,
                              r"rating must be finite: row 1 .*float32"),
    "weight beyond float32": (lambda t, s: Ratings.from_ids([1, 2], [1, 2], [3, 4], [1, -1e39]), InputError,
                              r"weight must be finite: row 1"),
    # columns
    "frame without user column": (lambda t, s: Ratings.from_pandas(pytest.importorskip("pandas").DataFrame(
        {"uid": [1], "movieId": [2], "rating": [3.0]})), InputError, r"no user column: expected one of"),
    "frame naming a missing column": (lambda t, s: Ratings.from_pandas(pytest.importorskip("pandas").DataFrame(
        {"userId": [1], "movieId": [2], "rating": [3.0]}), weight="w"), InputError, r"column 'w' not in the frame"),
    "CSV id mixing ints and text": (lambda t, s: load_movielens(_csv(t, "r.csv", """
        userId,movieId,rating
        1,10,4
        2,ten,3
        """)), InputError, r"r.csv:3: malformed id: column 'movieId' has 'ten'"),
    "CSV float user id": (lambda t, s: load_movielens(_csv(t, "r.csv", """
        user,item,rating
        1,10,4
        1.5,11,3
        """)), InputError, r"r.csv:3: malformed id: column 'user' has '1.5'"),
    "CSV without item column": (lambda t, s: load_movielens(_csv(t, "r.csv", "userId,film,rating\n1,2,3\n")),
                                InputError, r"r.csv has no item column"),
    "CSV bad rating": (lambda t, s: load_movielens(_csv(t, "r.csv", "userId,movieId,rating\n1,2,x\n")), InputError,
                       r"r.csv:2: malformed rating 'x'"),
    "CSV rating beyond float32": (lambda t, s: load_movielens(_csv(t, "r.csv", "1,2,1e39\n")), InputError,
                                  r"r.csv:1: rating must be finite, got 1e\+39 \(beyond float32's range\)"),
    # these named the data row ("row 1"), not the file's line
    "CSV NaN rating after a blank line": (lambda t, s: load_movielens(_csv(t, "r.csv", "user,item,rating\n1,2,3\n\n"
                                                                                       "1,3,nan\n")), InputError,
                                          r"r.csv:4: rating must be finite, got nan"),
    "CSV negative weight": (lambda t, s: load_movielens(_csv(t, "r.csv", "user,item,rating,weight\n1,2,3,1\n1,3,4,-2\n")),
                            InputError, r"r.csv:3: weight must be >= 0, got -2.0"),
    "CSV short line": (lambda t, s: load_movielens(_csv(t, "u.data", "1\t2\t3\n4\t5\n")), InputError,
                       r"u.data:2: malformed line: 2 fields"),
    # serving
    "predict unknown user id": (lambda t, s: s.predict([999], [100]), InputError, r"user id '999'"),
    "predict unknown item id": (lambda t, s: s.predict([10], [5]), InputError, r"item id '5'"),
    "predict a row index as an id": (lambda t, s: s.model.predict([0], [100]), InputError, r"user id '0'"),
    "predict with string ids on an int model": (lambda t, s: s.predict(["10"], [100]), InputError, r"user id '10'"),
    "recommend unknown user": (lambda t, s: s.recommend([3]), InputError, r"user id '3'"),
    "recommend negative min_support": (lambda t, s: s.recommend([10], min_support=-1), InputError, r"min_support"),
    "recommend a NaN embedding": (lambda t, s: recommend(s.head, _nan_row(s.model), 3), InputError,
                                  r"embeddings row 1 is not finite"),
    "single-user fold-in diverges": (lambda t, s: ServedModel(s.model, Recipe(HYP.replace(
        learning_rate=1e30, optimizer="sgd"), 4)).fold_in(s.seen.select_users([2])), InputError,
        r"diverged for 1 of 1 users \(user ids 12\)"),
    "low-level fold-in diverges": (lambda t, s: fold_in(s.head, s.seen, HYP.replace(learning_rate=1e30,
                                                                                   optimizer="sgd"), 4),
                                   InputError, r"diverged for 9 of 9 users"),
    # hand-built Ratings (the dataclass constructor checks nothing): a negative item index used to
    # gather another item's row and a negative weight to flip a rating's sign, without an error
    "ridge fold-in, negative item index": (lambda t, s: fold_in(s.head, _hand_built(s.seen, "items", 5, -3), HYP, 0,
                                                                solver="ridge"), InputError, r"row 5 has an item index < 0"),
    "ridge fold-in, item index too big": (lambda t, s: fold_in(s.head, _hand_built(s.seen, "items", 5, 12), HYP, 0,
                                                               solver="ridge"), InputError, r"row 5 has an item index >= 12"),
    "ridge fold-in, negative weight": (lambda t, s: fold_in(s.head, _hand_built(s.seen.select_users([1]), "weights", 2,
                                                                                -4.0), HYP, 0, solver="ridge"),
                                       InputError, r"row 2 has a negative weight"),
    # a broken indptr: the ridge solver's cheap check did not look at it, and an indptr that started
    # at 1 or ended short dropped ratings silently
    "ridge fold-in, indptr ending short": (lambda t, s: fold_in(s.head, _hand_built(s.seen, "indptr", -1, s.seen.nnz - 2),
                                                                HYP, 0, solver="ridge"), InputError,
                                           r"indptr must start at 0, never decrease and end at nnz"),
    "ridge, indptr starting at 1": (lambda t, s: retrain.ridge.ridge_embeddings(s.head, _hand_built(s.seen, "indptr", 0, 1),
                                                                              0.1), InputError,
                                    r"indptr must start at 0, never decrease and end at nnz"),
    # pretrain and protocol_split checked nothing: the MLP trained item -1 as the last item (and
    # 12 raised an IndexError inside torch), a split dropped the ratings past a short indptr
    "pretrain an MLP, negative item index": (lambda t, s: retrain.pretrain(_hand_built(s.seen, "items", 5, -1),
                                                                                    "mlp_2x2", iterations=1),
                                             InputError, r"ratings: row 5 has an item index < 0"),
    "pretrain ALS, negative weight": (lambda t, s: retrain.pretrain(_hand_built(s.seen, "weights", 5, -1.0),
                                                                             "matrix_factorization_2", iterations=1),
                                      InputError, r"ratings: row 5 has a negative weight"),
    "protocol_split, indptr ending short": (lambda t, s: protocol_split(_hand_built(s.seen, "indptr", -1, s.seen.nnz - 2)),
                                            InputError, r"data: indptr must start at 0, never decrease"),
    "model_rmse, negative item index": (lambda t, s: retrain.report.model_rmse(s.head, s.model.user_embeddings,
                                                                              _hand_built(s.seen, "items", 5, -1)),
                                        InputError, r"ratings: row 5 has an item index < 0"),  # scored the last item
    "served fold-in, negative item index": (lambda t, s: s.fold_in(_hand_built(s.seen, "items", 5, -3)), InputError,
                                            r"row 5 has an item index < 0"),
    "ridge fold-in, NaN rating": (lambda t, s: fold_in(s.head, _hand_built(s.seen, "ratings", 7, np.nan), HYP, 0,
                                                       solver="ridge"), InputError, r"row 7 has a non-finite rating"),
    "served fold-in, NaN rating": (lambda t, s: s.fold_in(_hand_built(s.seen, "ratings", 7, np.nan), solver="ridge"),
                                   InputError, r"row 7 has a non-finite rating"),
    # recommend's exclude_seen: item -1 excluded the last item instead of the seen one, 12 raised an
    # IndexError inside torch, a decreasing indptr a ValueError inside numpy
    "recommend excluding a negative item index": (lambda t, s: recommend(s.head, s.model.user_embeddings, 3,
                                                                         exclude_seen=_hand_built(s.seen, "items", 5, -1)),
                                                  InputError, r"exclude_seen: row 5 has an item index < 0"),
    "recommend excluding an item index too big": (lambda t, s: recommend(s.head, s.model.user_embeddings, 3,
                                                                         exclude_seen=_hand_built(s.seen, "items", 5, 12)),
                                                  InputError, r"exclude_seen: row 5 has an item index >= 12"),
    "recommend excluding with a decreasing indptr": (lambda t, s: recommend(
        s.head, s.model.user_embeddings, 3, exclude_seen=_hand_built(s.seen, "indptr", 2, 0)), InputError,
        r"exclude_seen: indptr must start at 0, never decrease"),
    "fold-in of a non-model": (lambda t, s: fold_in("model.safetensors", s.seen, HYP, 1), InputError,
                               r"expected a retrain Model or a Head, got str"),
    "fold-in of a dict": (lambda t, s: s.fold_in({"userId": [1]}), InputError, r"Ratings or a pandas DataFrame"),
    "fold-in of a frame without an item column": (lambda t, s: s.fold_in(
        pytest.importorskip("pandas").DataFrame({"userId": [1], "itemId": [100], "rating": [4.0]})), InputError,
        r"the frame has no item column: .*; name it: Ratings.from_pandas\(frame, item='...'\)"),
    "fold-in of string item ids": (lambda t, s: s.fold_in(Ratings.from_ids([1], ["100"], [4.0])), InputError,
                                   r"item id '100' is a string but the model's item ids are integers"),
    "add users with string ids": (lambda t, s: ServedModel(s.model, s.recipe, s.seen).add_users(
        Ratings.from_ids(["u1"], [100], [4.0])), InputError, r"user id 'u1' is a string but the model's user ids are integers"),
    # another model's fold-in: its seen items used to be stored as this model's (or a crash, another d)
    "add another model's fold-in, other items": (lambda t, s: ServedModel(s.model, s.recipe, s.seen).add_users(
        _other_models_result(s, 4, np.arange(12) + 200)), InputError,
        r"the fold-in result's ratings index items differently from the model"),
    "add another model's fold-in, other d": (lambda t, s: ServedModel(s.model, s.recipe, s.seen).add_users(
        _other_models_result(s, 2, s.head.item_ids)), InputError,
        r"the fold-in result's embeddings are \[1, 2\], the model needs \[1, d=4\]"),
    "ridge with an init of too few users": (lambda t, s: retrain.ridge.ridge_embeddings(s.head, s.seen, 0.1,
                                                                                        init=np.zeros((8, 4))),
                                            InputError, r"init must be \[n_users=9, d=4\], got \[8, 4\]"),
    # a DataFrame (or a list) where the low-level API takes Ratings indexed as the head: AttributeError
    "low-level fold-in of a frame": (lambda t, s: fold_in(s.head, pytest.importorskip("pandas").DataFrame(
        {"userId": [1], "movieId": [100], "rating": [4.0]}), HYP, 1), InputError,
        r"new_users_ratings must be retrain.Ratings, got a DataFrame: build one with retrain.Ratings.from_pandas"),
    "recommend excluding a list": (lambda t, s: recommend(s.head, s.model.user_embeddings, 3, exclude_seen=[1]),
                                   InputError, r"exclude_seen must be retrain.Ratings, got list"),
    "train on a frame": (lambda t, s: train_embeddings(s.head, pytest.importorskip("pandas").DataFrame(
        {"userId": [1], "movieId": [100], "rating": [4.0]}), HYP, 1), InputError, r"train must be retrain.Ratings"),
    # 2^62 Adam steps per user at most: the cpu kernel refused more with a plain ValueError (the
    # reference backend trained for ever); 4 ratings a user, batch 4: one step an epoch
    "train for more than 2^62 steps": (lambda t, s: train_embeddings(s.head, s.seen, HYP, 2**62 + 1, "cpu"), InputError,
                                       r"epochs: 4611686018427387905 epochs from epoch 0 would take the heaviest user "
                                       r"\(1 Adam steps per epoch\) past 4611686018427387904 steps: at most 4611686018427387904"),
    "ridge on a list": (lambda t, s: retrain.ridge.ridge_embeddings(s.head, [1, 2], 0.1), InputError,
                        r"ratings must be retrain.Ratings, got list"),
    # a mask that is not bool used to be cast: 0.5 excluded every item, indices [0, 1, 2] the wrong ones
    "recommend excluding a float mask": (lambda t, s: recommend(s.head, s.model.user_embeddings, 3,
                                                                exclude_items=np.full(12, 0.5)), InputError,
                                         r"exclude_items must be bool \[n_items=12\], got float64 values"),
    "serve with a support of other items": (lambda t, s: ServedModel(s.model, s.recipe, s.seen, np.ones(5, np.int64)),
                                            InputError, r"item_support must be integer counts >= 0 \[n_items=12\]"),
    "serve with seen ratings of other users": (lambda t, s: ServedModel(s.model, s.recipe, Ratings.from_coo(
        s.seen.user_of_row(), s.seen.items, s.seen.ratings, n_users=9, n_items=12, user_ids=np.arange(9) + 50,
        item_ids=s.head.item_ids)), InputError, r"seen ratings describe 9 users and 12 items, .*\(or other ids\)"),
    "recipe for another model": (lambda t, s: ServedModel(s.model, Recipe(HYP.replace(model="user_item_biases"), 1)),
                                 InputError, r"recipe is for model 'user_item_biases'"),
    "recipe without num_users": (lambda t, s: Recipe(HYP.replace(num_users=None), 1), InputError, r"num_users"),
    "recipe with a bad rating range": (lambda t, s: Recipe(HYP, 1, (5.0, 1.0)), InputError, r"rating_range"),
    # files
    "load a missing file": (lambda t, s: retrain.load(t / "nope.safetensors"), InputError, r"not found"),
    "load a folder": (lambda t, s: retrain.load(t), InputError, r"model file .* is a folder, expected a file"),
    "read ratings from a folder": (lambda t, s: load_movielens(t), InputError,
                                   r"ratings file .* is a folder, expected a file"),  # said "not found"
    "load a non-safetensors file": (lambda t, s: retrain.load(_csv(t, "x.safetensors", "hello")), InputError,
                                    r"x.safetensors: not a safetensors file"),
    "load a file missing user_embeddings": (lambda t, s: retrain.load(_without(t, s, "user_embeddings")),
                                            InputError, r"no user_embeddings"),
    "load a file missing a tower-less tensor": (lambda t, s: retrain.load(_without(t, s, "item_vectors")),
                                                InputError, r"lacks the tensor\(s\) \['item_vectors'\]"),
    "load a file missing item ids": (lambda t, s: retrain.load(_without(t, s, "item_ids")), InputError,
                                     r"lacks the tensor\(s\) \['item_ids'\]"),
    "load a malformed recipe": (lambda t, s: retrain.load(_bad_recipe(t, s)), InputError, r"recipe .* malformed"),
    # a recipe entry of the wrong type used to crash (ValueError) or read wrong ("15" as (1, 5), "false" as True)
    "load a recipe with a one-number rating range": (lambda t, s: retrain.load(_edited(t, s, recipe={
        "rating_range": [1]})), InputError, r"m.safetensors: the recipe .* malformed \(rating_range must be"),
    "load a recipe with a text rating range": (lambda t, s: retrain.load(_edited(t, s, recipe={
        "rating_range": "15"})), InputError, r"malformed \(rating_range must be"),
    "load a recipe with refit as text": (lambda t, s: retrain.load(_edited(t, s, recipe={"refit": "false"})),
                                         InputError, r"malformed \(refit must be True or False, got 'false'\)"),
    "load a recipe with val_loss as text": (lambda t, s: retrain.load(_edited(t, s, recipe={"val_loss": "x"})),
                                            InputError, r"malformed \(val_loss must be a number"),
    "load a recipe without its learning rate": (lambda t, s: retrain.load(_edited(t, s, recipe={"hyperparams": {
        k: v for k, v in s.recipe.hyp.to_dict().items() if k != "learning_rate"}})), InputError,
        r"lack the field\(s\) \['learning_rate'\]"),
    # tensors of a bundle that used to crash (IndexError, TypeError, UnicodeDecodeError) or load wrong
    "load a global bias of no value": (lambda t, s: retrain.load(_edited(t, s, {"global_bias": np.zeros(0, np.float32)})),
                                       InputError, r"m.safetensors: global_bias must be \[1\], got \[0\]"),
    "load a global bias of two values": (lambda t, s: retrain.load(_edited(t, s, {"global_bias": np.ones(2, np.float32)})),
                                         InputError, r"global_bias must be \[1\], got \[2\]"),
    "load a tower layer the metadata does not name": (lambda t, s: retrain.load(_edited(t, s, {
        "tower.0.weight": np.eye(4, dtype=np.float32), "tower.0.bias": np.zeros(4, np.float32)})), InputError,
        r"tower.0.bias', 'tower.0.weight'\] belong to no layer"),
    "load a repeated user id": (lambda t, s: retrain.load(_edited(t, s, {"user_ids": np.array([10, 11, 12, 13, 14, 15,
                                                                                               16, 17, 11])})),
                                InputError, r"m.safetensors: user id '11' is there twice \(entries 1 and 8"),
    "load a repeated item id": (lambda t, s: retrain.load(_edited(t, s, {"item_ids": np.arange(12) // 2 * 2 + 100})),
                                InputError, r"item id '100' is there twice \(entries 0 and 1; 6 repeats\)"),
    "predict with a head repeating an item id": (lambda t, s: Model(dataclasses.replace(
        s.head, item_ids=np.arange(12) % 11), s.model.user_embeddings, s.model.user_ids).predict([10], [3]), InputError,
        r"item id '0' is there twice"),
    "load a NaN user row": (lambda t, s: retrain.load(_edited(t, s, {"user_embeddings": _nan_row(s.model).numpy()})),
                            InputError, r"user_embeddings row 1 is not finite"),
    "save a NaN user row": (lambda t, s: Model(s.head, _nan_row(s.model), s.model.user_ids).save(t / "m.safetensors"),
                            InputError, r"user_embeddings row 1 is not finite"),  # a file the load refuses
    "load a file without its init": (lambda t, s: retrain.load(_edited(t, s, metadata={"init": None})), InputError,
                                     r"m.safetensors: the metadata lacks \['init'\]"),  # it loaded as glorot
    "load float seen.indptr": (lambda t, s: retrain.load(_edited(t, s, {"seen.indptr": s.seen.indptr * 1.0})),
                               InputError, r"seen.indptr / seen.items do not describe 9 users: .* got float64 \[10\]"),
    "load 2-d seen.indptr": (lambda t, s: retrain.load(_edited(t, s, {"seen.indptr": s.seen.indptr[:, None]})),
                             InputError, r"got int64 \[10, 1\]"),
    "load seen items out of range": (lambda t, s: retrain.load(_edited(t, s, {"seen.items": s.seen.items + 12})),
                                     InputError, r"m.safetensors: seen.items: item out of range: row 11 has item 23 >= 12"),
    "load fractional item support": (lambda t, s: retrain.load(_edited(t, s, {"item_support": s.item_support + 0.5})),
                                     InputError, r"item_support must be integer counts >= 0 \[n_items=12\], got float64 \[12\]"),
    "load negative item support": (lambda t, s: retrain.load(_edited(t, s, {"item_support": -s.item_support})),
                                   InputError, r"item_support must be integer counts >= 0 \[n_items=12\], got int64 \[12\]"),
    "load string item ids that are no UTF-8": (lambda t, s: retrain.load(_edited(t, s, {
        "item_ids": None, "item_ids.utf8": np.full(12, 0xFF, np.uint8), "item_ids.offsets": np.arange(13)})),
        InputError, r"m.safetensors: item_ids.utf8 is not UTF-8 text"),
    "load string item id offsets beyond the text": (lambda t, s: retrain.load(_edited(t, s, {
        "item_ids": None, "item_ids.utf8": np.full(12, 97, np.uint8), "item_ids.offsets": np.arange(13) * 5})),
        InputError, r"item_ids.offsets must rise from 0 to the 12 bytes of item_ids.utf8"),
    "load a model without a recipe": (lambda t, s: (s.model.save(t / "m.safetensors"),
                                                    retrain.load(t / "m.safetensors")), InputError,
                                      r"holds no recipe"),
    "save a user id that is no UTF-8 text": (lambda t, s: Model(s.head, s.model.user_embeddings[:2], ["ok", "b\udce9"])
                                               .save(t / "m.safetensors"), InputError,
                                               r"user_ids: row 1 is not valid text"),
    "save over a folder": (lambda t, s: s.save(t), IsADirectoryError,
                           r"Is a directory, expected a file name: '[^']+'$"),  # not the temporary's name
}


@pytest.mark.parametrize("case", API_CASES)
def test_bad_input_through_the_api(case, tmp_path, served):
    call, error, message = API_CASES[case]
    with pytest.raises(error, match=message):
        call(tmp_path, served)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


# ----------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, served):
    tmp = tmp_path_factory.mktemp("cli")
    served.save(tmp / "bundle.safetensors")
    served.model.save(tmp / "no_recipe.safetensors")
    (tmp / "float_id.csv").write_text("userId,movieId,rating\n1,100,4\n1.5,101,3\n")
    (tmp / "good.csv").write_text("userId,movieId,rating\n1,100,4\n1,101,3\n2,102,5\n")
    (tmp / "big_rating.csv").write_text("userId,movieId,rating\n1,100,1e39\n")
    (tmp / "string_items.csv").write_text("userId,movieId,rating\n1,tt100,4\n1,tt101,3\n")
    (tmp / "item_id_column.csv").write_text("userId,itemId,rating\n1,100,4\n")
    (tmp / "folder").mkdir()
    (tmp / "readonly").mkdir(mode=0o555)
    return tmp


def _snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


# name: (arguments given the folder, exit status, what the one error line names)
CLI_CASES = {
    "fold-in diverges": (lambda t: ["fold-in", "--model", t / "bundle.safetensors", "--ratings", t / "good.csv",
                                    "--lr", "1e30", "--out", t / "emb.safetensors"], 2, "diverged for 2 of 2 users"),
    "fold-in float id": (lambda t: ["fold-in", "--model", t / "bundle.safetensors", "--ratings", t / "float_id.csv",
                                    "--out", t / "emb.safetensors"], 2, "float_id.csv:3: malformed id"),
    "fold-in rating beyond float32": (lambda t: ["fold-in", "--model", t / "bundle.safetensors", "--ratings",
                                                 t / "big_rating.csv", "--out", t / "emb.safetensors"], 2,
                                      "rating must be finite"),
    "fold-in string item ids, integer model": (lambda t: ["fold-in", "--model", t / "bundle.safetensors", "--ratings",
                                                          t / "string_items.csv", "--out", t / "emb.safetensors"], 2,
                                               "item id 'tt100' is a string but the model's item ids are integers"),
    "fold-in CSV without an item column": (lambda t: ["fold-in", "--model", t / "bundle.safetensors", "--ratings",
                                                     t / "item_id_column.csv", "--out", t / "emb.safetensors"], 2,
                                          "has no item column: expected one of ['movieId', 'item'] (columns: "
                                          "['userId', 'itemId', 'rating']); rename that column in the header"),
    "fold-in model without recipe": (lambda t: ["fold-in", "--model", t / "no_recipe.safetensors", "--ratings",
                                                t / "good.csv", "--out", t / "emb.safetensors"], 2, "holds no recipe"),
    "fold-in out is a folder": (lambda t: ["fold-in", "--model", t / "bundle.safetensors", "--ratings",
                                           t / "good.csv", "--out", t / "folder"], 2, "folder"),
    "run out is a folder": (lambda t: ["run", "--model", t / "bundle.safetensors", "--users", 40, "--out",
                                       t / "folder"], 2, "--out"),
    "run out under a file": (lambda t: ["run", "--model", t / "bundle.safetensors", "--users", 40, "--out",
                                        t / "good.csv" / "m.safetensors"], 2, "good.csv is not a folder"),
    "run out unwritable": (lambda t: ["run", "--model", t / "bundle.safetensors", "--users", 40, "--out",
                                      t / "readonly" / "m.safetensors"], 2, "cannot be written"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_input_through_the_cli_writes_nothing(case, cli_files, capsys):
    if case == "run out unwritable" and os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    args, status, names = CLI_CASES[case]
    before = _snapshot(cli_files)
    capsys.readouterr()
    try:
        code = main([str(a) for a in args(cli_files)] + ["--quiet"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == status and len(err) == 1 and "error:" in err[0] and names in err[0], err
    assert _snapshot(cli_files) == before


# ----------------------------------------------------------------------------- files
KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    import retrain.files as files
    files.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die between write and rename
    files.atomic_write_bytes(sys.argv[1], b"new")
""")


def test_a_kill_inside_the_atomic_write_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(target)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    assert len(left) == 1 and target.read_bytes() == b"old"  # readers still see the old file
    atomic_write_bytes(target, b"newer")
    assert os.listdir(tmp_path) == ["model.safetensors"] and target.read_bytes() == b"newer"


def _fsync_failing_after(monkeypatch, n_ok: int) -> None:
    """``os.fsync`` as retrain.files calls it: the first ``n_ok`` calls work, then a full disk."""
    import errno

    import retrain.files as files
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) > n_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_several_files_are_written_all_or_none(tmp_path, monkeypatch):
    first, second = tmp_path / "emb.safetensors", tmp_path / "sub" / "top.csv"
    first.write_bytes(b"old")
    _fsync_failing_after(monkeypatch, 1)  # the second file's write meets a full disk
    with pytest.raises(OSError, match="No space"):
        atomic_write_files([(first, b"new"), (second, b"new")])
    assert first.read_bytes() == b"old" and not second.exists()  # the first was not renamed yet
    assert sorted(os.listdir(tmp_path)) == ["emb.safetensors", "sub"] and os.listdir(tmp_path / "sub") == []
    monkeypatch.undo()
    atomic_write_files([(first, b"new"), (second, b"newer")])
    assert first.read_bytes() == b"new" and second.read_bytes() == b"newer"


def test_temporaries_of_running_processes_and_other_files_are_kept(tmp_path):
    mine = tmp_path / f".tmp-{os.getpid()}-abc-model.safetensors"
    other_target = tmp_path / ".tmp-999999999-abc-other.safetensors"
    for path in (mine, other_target):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path), "model.safetensors") == []
    assert mine.exists() and other_target.exists()


def test_new_files_honour_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "new.bin", b"1")
    finally:
        os.umask(old)
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    (tmp_path / "kept.bin").write_bytes(b"0")
    os.chmod(tmp_path / "kept.bin", 0o604)
    atomic_write_bytes(tmp_path / "kept.bin", b"1")
    assert (tmp_path / "kept.bin").stat().st_mode & 0o777 == 0o604


def _deployment(tmp_path):
    """``serve/current -> ../v7/model.safetensors`` (a relative link, in another folder than its
    target), the target's mode 0o640."""
    for folder in ("v7", "serve"):
        (tmp_path / folder).mkdir()
    target = tmp_path / "v7" / "model.safetensors"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    (tmp_path / "serve" / "current").symlink_to("../v7/model.safetensors")
    return tmp_path / "serve" / "current", target


def test_an_atomic_write_through_a_link_writes_its_target_and_keeps_the_link(tmp_path):
    # The link was replaced by a regular file: "current" silently stopped pointing at v7.
    link, target = _deployment(tmp_path)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and os.readlink(link) == "../v7/model.safetensors"
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640  # the replaced file's mode
    assert os.listdir(tmp_path / "serve") == ["current"] and os.listdir(tmp_path / "v7") == ["model.safetensors"]
    # A chain of two links, the middle one in a third folder.
    (tmp_path / "alias").mkdir()
    (tmp_path / "alias" / "model").symlink_to("../v7/model.safetensors")
    os.unlink(link)
    link.symlink_to("../alias/model")
    atomic_write_bytes(link, b"newer")
    assert link.is_symlink() and (tmp_path / "alias" / "model").is_symlink() and target.read_bytes() == b"newer"
    assert [os.listdir(tmp_path / f) for f in ("serve", "alias", "v7")] == [["current"], ["model"],
                                                                          ["model.safetensors"]]


def test_an_atomic_write_through_a_dangling_link_creates_its_target_when_the_folder_exists(tmp_path, capsys):
    (tmp_path / "v8").mkdir()
    for name, to in (("next", "v8/model.safetensors"), ("lost", "v9/model.safetensors"), ("loop", "loop")):
        (tmp_path / name).symlink_to(to)
    atomic_write_bytes(tmp_path / "next", b"new")  # as open(path, "w") does
    assert (tmp_path / "next").is_symlink() and (tmp_path / "v8" / "model.safetensors").read_bytes() == b"new"
    with pytest.raises(FileNotFoundError, match=r"the folder of .*v9/model.safetensors, where the link leads"):
        atomic_write_bytes(tmp_path / "lost", b"new")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        atomic_write_bytes(tmp_path / "loop", b"new")
    assert sorted(os.listdir(tmp_path)) == ["loop", "lost", "next", "v8"] and os.listdir(tmp_path / "v8") == [
        "model.safetensors"]  # no v9 made, no temporary left
    code = main(["pretrain", "--out", str(tmp_path / "lost"), "--quiet"])  # refused before any work
    assert code == 2 and "--out " + str(tmp_path / "lost") + " cannot be written: No such file or directory: the " \
        "folder of" in capsys.readouterr().err and not (tmp_path / "v9").exists()


def test_two_outputs_that_are_one_file_are_refused(tmp_path):
    # Both temporaries were renamed onto the same file: the first content was lost.
    link, target = _deployment(tmp_path)
    with pytest.raises(InputError, match=r"serve/current and .*v7/model.safetensors are the same file"):
        atomic_write_files([(target, b"embeddings"), (link, b"recommendations")])
    with pytest.raises(InputError, match="are the same file"):
        atomic_write_files([(target, b"1"), (tmp_path / "v7" / ".." / "v7" / "model.safetensors", b"2")])
    assert target.read_bytes() == b"old" and os.listdir(tmp_path / "v7") == ["model.safetensors"]


def test_run_checks_out_before_tuning(tmp_path, monkeypatch, capsys):
    import retrain.cli as cli

    called = []
    monkeypatch.setattr(cli, "run_pipeline", lambda *a, **k: called.append(1))
    monkeypatch.setattr(cli.Model, "load", staticmethod(lambda path: called.append(2)))
    code = main(["run", "--model", str(tmp_path / "m.safetensors"), "--out", str(tmp_path), "--quiet"])
    assert code == 2 and called == [] and "--out" in capsys.readouterr().err


@pytest.mark.parametrize("command,option", [
    ("pretrain", "--out"), ("tune", "--journal"), ("tune", "--plot"), ("run", "--journal"), ("fold-in", "--out"),
    ("fold-in", "--recommendations")])
def test_every_output_is_checked_before_any_work(command, option, tmp_path, monkeypatch, capsys):
    # They used to fail at the end: a whole pretraining or tuning lost, or (--recommendations)
    # the embeddings written and the top-k not.
    import retrain.cli as cli

    called = []
    for name in ("_data", "_served"):
        monkeypatch.setattr(cli, name, lambda *a, **k: called.append(name))
    monkeypatch.setattr(cli.Model, "load", staticmethod(lambda path: called.append("load")))
    inputs = {"pretrain": [], "tune": ["--model", "m"], "run": ["--model", "m"],
              "fold-in": ["--model", "m", "--ratings", "r.csv"]}[command]
    code = main([command, *inputs, option, str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and called == [] and len(err) == 1 and f"{option} {tmp_path} is a folder" in err[0], err


@pytest.mark.parametrize("path,message", [("", "--out is empty, expected a file name"),
                                          ("new/", "--out new/ is a folder, expected a file name")])
def test_an_output_that_names_no_file_is_refused_before_any_work(path, message, monkeypatch, capsys):
    # Both used to fail after the pretraining, naming the temporary ("'.tmp-...' -> ''").
    import retrain.cli as cli

    monkeypatch.setattr(cli, "_data", lambda *a, **k: pytest.fail("loaded the data"))
    code = main(["pretrain", "--out", path, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("args,message", [
    (["fold-in", "--model", "{m}", "--ratings", "{r}", "--out", "{m}"], "--out {m} is the file of --model too"),
    (["fold-in", "--model", "{m}", "--ratings", "{r}", "--recommendations", "{r}"],
     "--recommendations {r} is the file of --ratings too"),
    (["fold-in", "--model", "{m}", "--ratings", "{r}", "--out", "{o}", "--recommendations", "{o}"],
     "--recommendations {o} is the file of --out too"),
    (["fold-in", "--model", "{m}", "--ratings", "{r}", "--out", "{o}", "--recommendations", "{l}"],
     "--recommendations {l} is the file of --out too"),  # a link to it
    (["tune", "--model", "{m}", "--data", "{r}", "--journal", "{r}"], "--journal {r} is the file of --data too"),
    (["run", "--model", "{m}", "--out", "{m}"], "--out {m} is the file of --model too"),
    (["pretrain", "--data", "{r}", "--out", "{r}"], "--out {r} is the file of --data too")])
def test_no_output_overwrites_an_input_or_another_output(args, message, tmp_path, monkeypatch, capsys):
    # fold-in --out model.safetensors replaced the model by its embeddings; tune --journal ratings.csv
    # appended the journal to the data.
    import retrain.cli as cli

    called = []
    for name in ("_data", "_served"):
        monkeypatch.setattr(cli, name, lambda *a, **k: called.append(name))
    monkeypatch.setattr(cli.Model, "load", staticmethod(lambda path: called.append("load")))
    files = {"m": tmp_path / "m.safetensors", "r": tmp_path / "r.csv", "o": tmp_path / "o"}
    for path in files.values():
        path.write_bytes(b"input")
    files["l"] = tmp_path / "l"
    files["l"].symlink_to("o")
    code = main([a.format(**files) for a in args] + ["--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and called == [] and len(err) == 1 and message.format(**files) in err[0], err
    assert all(path.read_bytes() == b"input" for path in files.values())


@pytest.fixture
def full_disk(tmp_path):
    """A 128 KiB tmpfs (root only): writes beyond it fail with ENOSPC."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs to make a full disk")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_keeps_the_old_file_whole_and_leaves_no_temporary(full_disk, capsys):
    target = full_disk / "model.safetensors"
    target.write_bytes(b"old" * 20_000)  # 60 kB of the 128
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"x" * (1 << 20))  # 1 MiB into what is left
    assert target.read_bytes() == b"old" * 20_000 and os.listdir(full_disk) == ["model.safetensors"]
    capsys.readouterr()  # the CLI: a base model too big for the disk is one error line, exit 2
    code = main(["pretrain", "--users", "300", "--model", "matrix_factorization_64", "--out", str(target), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left" in err[0], err
    assert target.read_bytes() == b"old" * 20_000 and os.listdir(full_disk) == ["model.safetensors"]
