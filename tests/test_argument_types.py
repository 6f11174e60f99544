"""Argument types across the public API (the sixth audit): flags that are no bools, integers
beyond what they reach.

Python takes a flag by its truth, so ``refit="no"`` refitted and ``exclude_seen="false"`` excluded:
silently wrong results.  An integer beyond int64 (or a C int) reached pybind11, NLopt, numpy or
torch and raised a bare OverflowError or TypeError there.  Each row calls one public entry point
with such a value and expects an InputError naming the argument and the value, before any work.
"""
import dataclasses

import numpy as np
import pytest
import torch

import retrain
from problems import BACKEND, planted_hyp, planted_problem, random_head
from retrain import InputError, Ratings, distributed
from retrain.backends import available_backends, get_backend
from retrain.backends.base import csr_tensors
from retrain.baselines import batched, eager_loop, user_parallel
from retrain.bench import run_bench
from retrain.bundle import Recipe, ServedModel
from retrain.contract import MAX_STEPS
from retrain.demo import run_demo
from retrain.errors import check_bool
from retrain.heads import Model
from retrain.progress import MeteredBackend
from retrain.trainer import Pruning, prepare, run_probes


@pytest.mark.parametrize("value", [True, False, np.True_, np.False_, np.array([1, 2]).any()])
def test_check_bool_accepts_bools_and_numpy_bools(value):
    assert check_bool("flag", value) is bool(value)


@pytest.mark.parametrize("value", ["no", "false", "True", "", 1, 0, 1.0, None, np.int64(1), np.array(True),
                                   torch.tensor(True), [False]])
def test_check_bool_refuses_everything_else(value):
    with pytest.raises(InputError, match=r"^flag must be True or False, got "):
        check_bool("flag", value)


@pytest.fixture(scope="module")
def problem():
    head, train, val = planted_problem(n_users=12, n_items=20)
    return head, train, val


@pytest.fixture(scope="module")
def served():
    head = dataclasses.replace(random_head("mf", n_items=6, d=3, seed=1), item_ids=np.arange(6) + 50)
    hyp = retrain.HyperParams(model="matrix_factorization_3", batch_size=2, num_users=3)
    ratings = Ratings.from_coo([0, 0, 1, 2], [0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0], n_users=3, n_items=6,
                               user_ids=[7, 8, 9], item_ids=head.item_ids)
    return ServedModel(Model(head, torch.zeros(3, 3), ratings.user_ids), Recipe(hyp, 2, (1.0, 4.0)), ratings)


def _pipeline(problem, max_iters=2, **flags):
    head, train, val = problem
    model = Model(head, torch.zeros(train.n_users, head.d), train.user_ids)
    retrain.retrain_user_embeddings(model, train, val, planted_hyp(max_epochs=2), max_iters, backend=BACKEND,
                                    n_starts=1, **flags)


def _run_probes(problem, **flags):
    head, train, val = problem
    run_probes(prepare(head, train, val, planted_hyp(), BACKEND), [0.1], [0.1], planted_hyp(max_epochs=2), **flags)


def _batched(problem, **flags):
    head, train, _ = problem
    init = torch.zeros(train.n_users, head.d)
    batched(head, csr_tensors(train, "cpu"), init, torch.ones(1), torch.ones(1), n_epochs=1, batch_size=2, **flags)


def _cpu_backend(**flags):
    if "cpu" not in available_backends():
        pytest.skip("the C++ extension is not built")
    from retrain.backends.cpu import CpuBackend
    CpuBackend(**flags)


# (entry point, the flag, a call that passes it)
FLAG_CASES = [
    ("retrain_user_embeddings", "refit", lambda p, s, v: _pipeline(p, refit=v)),
    ("retrain_user_embeddings", "shards", lambda p, s, v: _pipeline(p, shards=v)),
    ("train_probes", "return_embeddings",
     lambda p, s, v: retrain.train_probes(*p, [0.1], [0.1], planted_hyp(max_epochs=2), BACKEND, return_embeddings=v)),
    ("run_probes", "return_embeddings", lambda p, s, v: _run_probes(p, return_embeddings=v)),
    ("tune", "space_filling_first_batch",
     lambda p, s, v: retrain.tune(*p, planted_hyp(max_epochs=2), max_evals=2, backend=BACKEND,
                                  space_filling_first_batch=v)),
    ("CpuBackend", "users_in_lanes", lambda p, s, v: _cpu_backend(users_in_lanes=v)),
    ("ServedModel.predict", "clip", lambda p, s, v: s.predict([7], [50], clip=v)),
    ("ServedModel.recommend", "exclude_seen", lambda p, s, v: s.recommend([7], k=2, exclude_seen=v)),
    ("Recipe", "refit", lambda p, s, v: Recipe(s.recipe.hyp, 2, refit=v)),
    ("Ratings.with_items", "drop_unknown", lambda p, s, v: s.seen.with_items(np.arange(6) + 50, drop_unknown=v)),
    ("baselines.batched", "compile", lambda p, s, v: _batched(p, compile=v)),
    ("bench.run_bench", "baselines", lambda p, s, v: run_bench(model="matrix_factorization_2", users=20, probes=1,
                                                                epochs=1, baseline_steps=1, baselines=v)),
    ("demo.run_demo", "progress", lambda p, s, v: run_demo(retrain.synthetic_ratings(n_users=20, n_items=10),
                                                            "synthetic", progress=v, max_evals=1)),
    ("distributed.train_probes", "return_embeddings",
     lambda p, s, v: distributed.train_probes(*p, [0.1], [0.1], planted_hyp(), return_embeddings=v)),
    ("distributed.train_probes", "gather",
     lambda p, s, v: distributed.train_probes(*p, [0.1], [0.1], planted_hyp(), gather=v)),
    ("distributed.train_embeddings", "gather",
     lambda p, s, v: distributed.train_embeddings(p[0], p[1], planted_hyp(num_users=12), 1, gather=v)),
]


@pytest.mark.parametrize("value", ["no", 1])
@pytest.mark.parametrize("entry,flag,call", FLAG_CASES, ids=[f"{e}-{f}" for e, f, _ in FLAG_CASES])
def test_a_flag_that_is_no_bool_is_refused(entry, flag, call, value, problem, served, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run_demo's default output folder, were it reached
    with pytest.raises(InputError, match=f"^{flag} must be True or False, got {value!r}$"):
        call(problem, served, value)


def test_a_numpy_bool_flag_is_taken_as_its_value(served):
    # User 7 rated items 50 and 51: np.True_ leaves them out, np.False_ ranks them with the rest.
    seen = served.recommend([7], k=6, exclude_seen=np.True_)
    every = served.recommend([7], k=6, exclude_seen=np.False_)
    assert not {50, 51} & set(seen.item_ids[0][np.isfinite(seen.scores[0])].tolist())
    assert set(every.item_ids[0].tolist()) == set(range(50, 56))
    assert Recipe(served.recipe.hyp, 2, refit=np.True_).refit is True


BEYOND_INT64 = 2**70


def _cpu_threads(problem, threads):
    if "cpu" not in available_backends():
        pytest.skip("the C++ extension is not built")
    from retrain.backends.cpu import CpuBackend
    retrain.train_probes(*problem, [0.1], [0.1], planted_hyp(max_epochs=2), CpuBackend(num_threads=threads))


# (the argument, a call that passes it ``value``, the range the message names); each one went on to
# raise a bare OverflowError, TypeError or ValueError in pybind11, NLopt, numpy or torch.
INT_CASES = [
    ("max_epochs", lambda p, v: planted_hyp(max_epochs=v), r"\[1, 4611686018427387904\]"),
    ("epochs_per_checkpoint", lambda p, v: planted_hyp(epochs_per_checkpoint=v), r"\[1, 4611686018427387904\]"),
    ("patience", lambda p, v: planted_hyp(patience=v), r"\[0, 4611686018427387904\]"),
    ("num_threads", _cpu_threads, r"\[1, 2147483647\]"),
    ("max_evals", lambda p, v: retrain.tune(*p, planted_hyp(max_epochs=2), max_evals=v, backend=BACKEND),
     r"\[1, 2147483647\]"),
    ("seed", lambda p, v: retrain.tune(*p, planted_hyp(max_epochs=2), max_evals=2, seed=v, backend=BACKEND),
     r"\[0, 4294967295\]"),
    ("max_iters", lambda p, v: _pipeline(p, max_iters=v), r"\[1, 2147483647\]"),
    ("max_evals", lambda p, v: run_demo(retrain.synthetic_ratings(n_users=20, n_items=10), "synthetic", max_evals=v),
     r"\[1, 2147483647\]"),
    ("n_users", lambda p, v: retrain.synthetic_ratings(n_users=v), r"\[1, 2\*\*63 - 1\]"),
    ("n_items", lambda p, v: retrain.synthetic_ratings(n_items=v), r"\[2, 2\*\*63 - 1\]"),
    ("rank", lambda p, v: retrain.synthetic_ratings(n_users=10, rank=v), r"\[1, 2\*\*63 - 1\]"),
    ("n_users", lambda p, v: Ratings.from_coo([0], [0], [1.0], n_users=v), r"\[0, 2\*\*63 - 1\]"),
    ("n_items", lambda p, v: Ratings.from_coo([0], [0], [1.0], n_items=v), r"\[0, 2\*\*63 - 1\]"),
]


@pytest.mark.parametrize("name,call,bounds", INT_CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(INT_CASES)])
def test_an_integer_beyond_its_range_is_refused_naming_it(name, call, bounds, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run_demo's default output folder, were it reached
    with pytest.raises(InputError, match=rf"^{name} must be an integer in {bounds}, got {BEYOND_INT64}$"):
        call(problem, BEYOND_INT64)


def test_cpu_threads_beyond_a_c_int_are_refused(problem):
    # 2**31 fits int64 but not OpenMP's int: pybind11's TypeError at the first call before.
    with pytest.raises(InputError, match=r"^num_threads must be an integer in \[1, 2147483647\], got 2147483648$"):
        _cpu_threads(problem, 2**31)


def test_a_problem_start_refuses_a_keep_best_that_is_no_bool(problem):
    prepared = prepare(*problem, planted_hyp(max_epochs=2), BACKEND)
    with pytest.raises(InputError, match="^keep_best must be True or False, got 'no'$"):
        prepared.start([0.1], [0.1], keep_best="no")


def test_the_tuner_seed_is_checked_as_hyp_seed(problem):
    for seed in (-1, 2**32, "1"):  # numpy refused -1 with a ValueError, NLopt 2**64 with an OverflowError
        with pytest.raises(InputError, match=r"^seed must be an integer in \[0, 4294967295\], got "):
            retrain.tune(*problem, planted_hyp(max_epochs=2), max_evals=2, seed=seed, backend=BACKEND)


@pytest.mark.parametrize("model", [f"matrix_factorization_{2**31}", f"mlp_{BEYOND_INT64}x4", f"mlp_4x{2**31}"])
def test_a_model_size_beyond_a_c_int_is_refused(model):
    with pytest.raises(InputError, match=rf"^model name '{model}': its sizes must be in \[1, 2147483647\]$"):
        retrain.HyperParams(model=model)


def test_the_largest_allowed_counts_are_taken():
    hyp = retrain.HyperParams(model="matrix_factorization_2147483647", max_epochs=2**62, epochs_per_checkpoint=2**62,
                              patience=2**62)
    assert (hyp.max_epochs, hyp.epochs_per_checkpoint, hyp.patience) == (2**62, 2**62, 2**62)


@pytest.mark.parametrize("baseline", [eager_loop, batched, user_parallel])
@pytest.mark.parametrize("argument,value,bounds", [
    ("seed", 2**32, r"\[0, 4294967295\]"),  # user_parallel hashes it mod 2**32: it trained as seed 0
    ("batch_size", BEYOND_INT64, r"\[1, 4611686018427387904\]"),  # one minibatch of everything
    ("max_steps", 2.5, r"\[0, 2\*\*63 - 1\]"),  # three steps
])
def test_a_baseline_checks_its_counts_as_the_backends_do(baseline, argument, value, bounds, problem):
    head, train, _ = problem
    counts = dict(n_epochs=1, batch_size=2, seed=0, max_steps=None)
    with pytest.raises(InputError, match=rf"^{argument} must be an integer in {bounds}, got {value}$"):
        baseline(head, csr_tensors(train, "cpu"), torch.zeros(train.n_users, head.d), torch.ones(1), torch.ones(1),
                 **{**counts, argument: value})


# A user's Adam step count is an int64 in every backend, at most MAX_STEPS = 2**62.  A batch that
# would train its heaviest user past it raised an OverflowError (cpu, for 2**70 epochs) or a plain
# ValueError from the kernel, and never returned on the reference backend.
PROBLEM_BACKENDS = [b for b in ("reference", "cpu", "triton") if b in available_backends()]  # triton: interpreted


def _steps(problem, batch_size):
    return -(-int(problem[1].counts.max()) // batch_size)  # the heaviest user's steps per epoch


@pytest.mark.parametrize("backend", PROBLEM_BACKENDS)
@pytest.mark.parametrize("call", ["train", "checkpoints"])
def test_a_batch_that_would_step_its_heaviest_user_past_2_62_is_refused(backend, call, problem):
    hyp = planted_hyp(max_epochs=2, batch_size=2)
    prepared = prepare(*problem, hyp, backend)
    steps = _steps(problem, 2)
    assert steps > 1  # so that the bound is not MAX_STEPS itself
    prepared.start([0.1], [0.1])
    prepared.checkpoints([1])
    left = MAX_STEPS // steps - 1
    run = (lambda n: prepared.train(n)) if call == "train" else (lambda n: prepared.checkpoints([1, n - 1]))
    name = "n_epochs" if call == "train" else "epochs"
    for n in (left + 1, 2**70):
        with pytest.raises(InputError, match=rf"^{name}: {n} epochs from epoch 1 would take the heaviest user "
                                             rf"\({steps} Adam steps per epoch\) past {MAX_STEPS} steps: at most {left}$"):
            run(n)
    assert prepared.epoch == 1  # nothing trained
    for bad in (2.5, -1, True, "2"):  # int(2.5) trained 2 epochs; -1 trained none, silently
        with pytest.raises(InputError, match=rf"^{name} must be an integer"):
            run(bad) if call == "train" else prepared.checkpoints([bad])
    assert prepared.epoch == 1
    if call == "checkpoints":  # a TypeError from iterating a number; "12" read as [1, 2]
        for bad in (4, "12", None):
            with pytest.raises(InputError, match=r"^epochs must be a sequence of epoch counts, got "):
                prepared.checkpoints(bad)


@pytest.mark.parametrize("backend", PROBLEM_BACKENDS)
def test_max_epochs_past_2_62_steps_of_the_heaviest_user_is_refused_before_any_training(backend, problem):
    steps = _steps(problem, 2)
    most = MAX_STEPS // steps
    hyp = planted_hyp(max_epochs=most + 1, epochs_per_checkpoint=most + 1, batch_size=2)
    prepared = prepare(*problem, hyp, backend)
    with pytest.raises(InputError, match=rf"^hyp.max_epochs: {most + 1} epochs from epoch 0 .* at most {most}$"):
        run_probes(prepared, [0.1], [0.1], hyp)
    assert prepared.n_probes == 0  # no batch was started


def test_a_metered_problem_checks_the_epochs_before_it_counts_them(problem):
    # The meter summed the entries first: ["2"] raised a bare TypeError there.
    prepared = prepare(*problem, planted_hyp(max_epochs=2), MeteredBackend(get_backend(BACKEND)))
    prepared.start([0.1], [0.1])
    with pytest.raises(InputError, match="^epochs must be an integer >= 0, got '2'$"):
        prepared.checkpoints(["2"])
    assert prepared.epoch == 0


@pytest.mark.parametrize("backend", PROBLEM_BACKENDS)
@pytest.mark.parametrize("lrs,regs,message", [
    ([0.1, 0.2], [0.1], r"^lrs and regs must have the same length, got 2 and 1$"),  # reference: broadcast
    ([-0.1], [0.1], r"^learning rates must be > 0 and regularisations >= 0$"),  # trained uphill
    ([0.1], [-1.0], r"^learning rates must be > 0 and regularisations >= 0$"),
    ([0.1, float("nan")], [0.1, 0.1], r"^lrs must be finite, got \[0.1, nan\]$"),
    ([[0.1]], [[0.1]], r"^lrs must be a non-empty 1-d sequence, got shape \(1, 1\)$"),  # a torch RuntimeError
    (["a"], [0.1], r"^lrs must be a non-empty 1-d sequence of numbers, got \['a'\]$"),
])
def test_a_problem_start_checks_its_step_sizes_as_run_probes_does(backend, lrs, regs, message, problem):
    prepared = prepare(*problem, planted_hyp(max_epochs=2), backend)
    prepared.start([0.1, 0.2, 0.3], [0.0, 0.0, 0.0])
    with pytest.raises(InputError, match=message):
        prepared.start(lrs, regs)
    assert prepared.n_probes == 3  # the batch before is still there
    prepared.start([], [])  # an empty batch stays allowed
    assert prepared.n_probes == 0


def test_run_probes_refuses_what_is_no_problem_pruning_or_callback_before_training(problem):
    # An AttributeError or TypeError before; the bad callback and the string loss only at a probe's
    # stop or the first checkpoint, after training had begun.
    hyp = planted_hyp(max_epochs=2)
    prepared = prepare(*problem, hyp, BACKEND)
    for kwargs, message in ((dict(pruning="x"), r"^pruning must be a retrain.trainer.Pruning or None, got str$"),
                            (dict(on_finish=3), r"^on_finish must be a callable \(index, result\) or None, got 3$")):
        with pytest.raises(InputError, match=message):
            run_probes(prepared, [0.1], [0.1], hyp, **kwargs)
    assert prepared.n_probes == 0  # no batch was started
    with pytest.raises(InputError, match=r"^problem must be a prepared problem \(retrain.trainer.prepare\), got str$"):
        run_probes("problem", [0.1], [0.1], hyp)
    with pytest.raises(InputError, match=r"^Pruning.known must hold losses \(numbers\), got 'a'$"):
        Pruning(known=(0.5, "a"))


def test_starts_outside_the_bounds_name_them_as_plain_numbers(problem):
    with pytest.raises(InputError, match=r"inside the bounds \(\(-2.0, 3.0\), \(-3.0, 5.0\)\), got \[\(9, 9\)\]$"):
        retrain.tune(*problem, planted_hyp(max_epochs=2), max_evals=2, starts=[(9, 9)], backend=BACKEND)


HYP_ENTRIES = {  # an AttributeError on the first field each read ("'str' object has no attribute 'num_users'")
    "prepare": lambda p, hyp: prepare(*p, hyp, BACKEND),
    "train_probes": lambda p, hyp: retrain.train_probes(*p, [0.1], [0.1], hyp, BACKEND),
    "run_probes": lambda p, hyp: run_probes(prepare(*p, planted_hyp(max_epochs=2), BACKEND), [0.1], [0.1], hyp),
    "train_embeddings": lambda p, hyp: retrain.train_embeddings(p[0], p[1], hyp, 2, BACKEND),
    "fold_in": lambda p, hyp: retrain.fold_in(p[0], p[1], hyp, 2, backend=BACKEND),
    "tune": lambda p, hyp: retrain.tune(*p, hyp, max_evals=2, backend=BACKEND),
    "retrain_user_embeddings": lambda p, hyp: retrain.retrain_user_embeddings(
        Model(p[0], torch.zeros(p[1].n_users, p[0].d), p[1].user_ids), p[1], p[2], hyp, 2, backend=BACKEND),
}


@pytest.mark.parametrize("entry", HYP_ENTRIES)
@pytest.mark.parametrize("hyp", ["matrix_factorization_3", {"max_epochs": 2}, None])
def test_hyperparameters_that_are_no_hyperparams_are_named(entry, hyp, problem):
    with pytest.raises(InputError, match=rf"^hyp must be a retrain.HyperParams, got {type(hyp).__name__}: "):
        HYP_ENTRIES[entry](problem, hyp)


def test_retrain_refuses_a_model_that_is_no_model(problem):
    head, train, val = problem
    with pytest.raises(InputError, match=r"^model must be a retrain.heads.Model \(.*\), got Head$"):
        retrain.retrain_user_embeddings(head, train, val, planted_hyp(max_epochs=2), 2, backend=BACKEND)


def test_a_tuning_journal_that_is_a_folder_or_no_path_is_refused_before_tuning(problem, tmp_path):
    # IsADirectoryError and os.fspath's TypeError before.
    for journal, message in ((tmp_path, rf"^journal {tmp_path} is a folder, expected a file name$"),
                             (3, r"^journal must be a file path \(str or os.PathLike\), got 3$")):
        with pytest.raises(InputError, match=message):
            retrain.tune(*problem, planted_hyp(max_epochs=2), max_evals=2, journal=journal, backend=BACKEND)


def test_a_path_that_is_no_path_is_named(served):
    # os.fspath's TypeError ("expected str, bytes or os.PathLike object, not int") named no argument.
    for call, message in ((lambda: retrain.load(3), r"^path must be a file path \(str or os.PathLike\), got 3$"),
                          (lambda: served.save(None), r"^path must be a file path \(str or os.PathLike\), got None$"),
                          (lambda: retrain.load_movielens(3),
                           r"^ratings file must be a file path \(str or os.PathLike\), got 3$")):
        with pytest.raises(InputError, match=message):
            call()


def test_serving_objects_name_a_wrong_type(served):
    # AttributeErrors on their first field before, and torch's "new(): invalid data type 'str'".
    head, recipe = served.model.head, served.recipe
    for call, message in (
            (lambda: Recipe("matrix_factorization_3", 2), r"^hyp must be a retrain.HyperParams, got str: "),
            (lambda: ServedModel("model", recipe), r"^model must be a retrain.heads.Model, got str$"),
            (lambda: ServedModel(served.model, {"epochs": 2}), r"^recipe must be a retrain.bundle.Recipe, got dict$"),
            (lambda: Model("head", torch.zeros(3, 3), [7, 8, 9]), r"^head must be a retrain.Head or implement "),
            (lambda: Model(head, "table", [7, 8, 9]),
             r"^user_embeddings must be a \[n_users, d\] tensor or array of numbers, got str$")):
        with pytest.raises(InputError, match=message):
            call()
