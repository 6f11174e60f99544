"""Users sharded over gloo ranks: bitwise the probes, tuned values and embeddings of one process;
the assignment; a failing rank makes the others stop with a clear error.

Each test spawns its ranks as processes (1 thread each) on a free localhost port; the oracle is
one process running ``retrain.train_probes`` / ``retrain.tune`` / ``retrain.train_embeddings``.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import retrain.distributed as distributed
from problems import BACKEND, planted_hyp, planted_problem, random_head
from ranks import free_port, results, run_ranks
from retrain.backends import available_backends, get_backend
from retrain.progress import MeteredBackend
from retrain.contract import MAX_STEPS, user_key
from retrain.data import Ratings, synthetic_ratings
from retrain.errors import InputError
from retrain.heads import Head
from retrain.hyperparams import HyperParams
from retrain.movielens import load_movielens
from retrain.trainer import prepare, train_embeddings, train_probes
from retrain.tuner import tune
from retrain.bundle import load
from retrain.heads import Model
from retrain.pipeline import retrain_user_embeddings

ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small" / "ratings.csv"

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


# --------------------------------------------------------------------------- problems
def _synthetic():
    data = synthetic_ratings(300, 80, 12, seed=1)
    train, val = data.split_per_user(0.25, seed=0)
    head = random_head("mf", 80, d=4, seed=2)
    return head, train, val


def _movielens():
    data = load_movielens(ML_SMALL).subsample_users(0.12, seed=0)
    train, val = data.split_per_user(0.2, seed=0)
    g = torch.Generator().manual_seed(0)
    head = Head.matrix_factorization(torch.randn(data.n_items, 8, generator=g) / 8**0.5,
                                     torch.randn(data.n_items, generator=g) * 0.3, 3.5, item_ids=data.item_ids)
    return head, train, val


def _one_user_overflows():
    """``_synthetic`` but one user of rank 1 (of 2) has a rating of 3e38 and no validation ratings:
    its state becomes NaN at once, for every probe, and only its shard's training flags say so."""
    head, train, val = _synthetic()
    user = int(np.flatnonzero(distributed.shard_users(user_key(train.user_ids), train.counts, 2) == 1)[0])
    ratings = train.ratings.copy()
    ratings[train.indptr[user]] = 3e38
    train = Ratings(train.indptr, train.items, ratings, train.weights, train.user_ids, train.item_ids)
    keep = val.user_of_row() != user
    val = Ratings.from_coo(val.user_of_row()[keep], val.items[keep], val.ratings[keep], val.weights[keep],
                           n_users=val.n_users, n_items=val.n_items, user_ids=val.user_ids, item_ids=val.item_ids)
    return head, train, val


PROBLEMS = {"synthetic": _synthetic, "ml-latest-small": _movielens, "one user overflows": _one_user_overflows}
LRS, REGS = [3e-3, 0.01, 0.05, 1e20], [1e-4, 1e-3, 1e-2, 0.0]  # lr 1e20 diverges
HYP = HyperParams(model="matrix_factorization_4", batch_size=4, max_epochs=7, epochs_per_checkpoint=2, patience=1)


def _probes_job(rank, name, budget):
    head, train, val = PROBLEMS[name]()
    hyp = HYP if name == "synthetic" else HYP.replace(model="matrix_factorization_8")
    probes = distributed.train_probes(head, train, val, LRS, REGS, hyp, BACKEND, return_embeddings=True,
                                      memory_budget=budget)
    return probes, distributed.train_embeddings(head, train, hyp.replace(learning_rate=0.05), 3, BACKEND)


def _same_probes(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        # bitwise (a diverged checkpoint's NaN too, which == would call unequal)
        assert np.asarray(g.history, dtype=np.float64).tobytes() == np.asarray(w.history, dtype=np.float64).tobytes()
        assert (g.best_epoch, g.best_val_loss, g.stop_reason) == (w.best_epoch, w.best_val_loss, w.stop_reason)


@pytest.mark.parametrize("world_size,name,budget", [
    (2, "synthetic", None),
    (3, "synthetic", 1),  # a budget of one probe at a time: groups of 1, each gathered
    (2, "one user overflows", None),  # every probe diverges on rank 1's shard only
    pytest.param(2, "ml-latest-small", None,
                 marks=pytest.mark.skipif(not ML_SMALL.exists(), reason="ml-latest-small not present")),
])
def test_train_probes_bitwise_as_one_process(world_size, name, budget):
    head, train, val = PROBLEMS[name]()
    hyp = HYP if name == "synthetic" else HYP.replace(model="matrix_factorization_8")
    want = train_probes(head, train, val, LRS, REGS, hyp, BACKEND, return_embeddings=True, memory_budget=budget)
    reasons = {"diverged"} if name == "one user overflows" else {"diverged", "patience"}
    assert {r.stop_reason for r in want} >= reasons  # what the problem is there to exercise
    want_embeddings = train_embeddings(head, train, hyp.replace(learning_rate=0.05), 3, BACKEND)
    ranks = results(run_ranks(world_size, _probes_job, name, budget))
    for rank, (got, embeddings) in enumerate(ranks):
        _same_probes(got, want)
        assert torch.equal(embeddings, want_embeddings) if rank == 0 else embeddings is None  # gathered
        for g, w in zip(got, want):
            if rank == 0:
                assert torch.equal(g.embeddings, w.embeddings)
            else:
                assert g.embeddings is None


def _tune_job(rank, journal):
    head, train, val = planted_problem(n_users=30)
    return distributed.tune(head, train, val, planted_hyp(), backend=BACKEND, max_evals=10, n_starts=2,
                            journal=journal)


def test_tune_same_as_one_process_and_resumes_from_rank0_journal(tmp_path):
    head, train, val = planted_problem(n_users=30)
    want = tune(head, train, val, planted_hyp(), backend=BACKEND, max_evals=10, n_starts=2)
    journal = tmp_path / "tune.jsonl"
    for got in results(run_ranks(3, _tune_job, str(journal))):
        assert (got.a, got.b, got.val_loss, got.epochs) == (want.a, want.b, want.val_loss, want.epochs)
        assert [(e.a, e.b, e.loss, e.epochs) for e in got.history] == [(e.a, e.b, e.loss, e.epochs) for e in want.history]
    lines = journal.read_text().splitlines()
    assert len(lines) == 1 + 10  # a header and the entries, written once, by rank 0
    # An interrupted run (the last 4 entries lost) resumes from the journal: only those train again.
    journal.write_text("\n".join(lines[:1 + 6]) + "\n")
    resumed = results(run_ranks(2, _tune_job, str(journal)))[1]
    assert (resumed.a, resumed.b, resumed.epochs) == (want.a, want.b, want.epochs)
    assert sum(e.trained for e in resumed.history) == 4


# --------------------------------------------------------------------------- the pipeline
PIPELINES = {  # name: (head, train, val), hyper-parameters
    "planted": (lambda: planted_problem(n_users=40), planted_hyp(subsampling_factor=0.5, max_epochs=8)),
    "ml-latest-small": (_movielens, HYP.replace(model="matrix_factorization_8", subsampling_factor=0.5, max_epochs=8)),
}


def _pipeline(name, path, **options):
    problem, hyp = PIPELINES[name]
    head, train, val = problem()
    return retrain_user_embeddings(Model(head, torch.zeros(train.n_users, head.d), train.user_ids), train, val,
                                   hyp, max_iters=8, n_starts=2, backend=BACKEND, path=path, **options)


def _outcome(result):
    """What every rank must agree on, bitwise (floats compared with ==)."""
    return (result.tune.a, result.tune.b, result.tune.val_loss, [(e.a, e.b, e.loss) for e in result.tune.history],
            result.epochs, result.val_loss, result.history, result.stop_reason, result.hyp, result.refit)


def _pipeline_job(rank, name, out):
    gathered = _pipeline(name, f"{out}/gathered.safetensors")
    kept = _pipeline(name, f"{out}/sharded.safetensors", max_gather_bytes=0)  # any table is "too large": shards
    table = None if gathered.model is None else gathered.model.user_embeddings
    # Saving again where rank 1 cannot write its file (a folder is in the way): every rank raises.
    os.makedirs(f"{out}/blocked.shard-00001-of-{kept.shard.world_size:05d}.safetensors", exist_ok=True)
    try:
        kept.save(f"{out}/blocked.safetensors")
        failed = None
    except OSError as exc:
        failed = str(exc)
    return (_outcome(gathered), table, _outcome(kept), kept.shard.users, kept.model.user_ids,
            kept.model.user_embeddings, failed)


@pytest.mark.parametrize("world_size,name", [
    (2, "planted"),
    (3, "planted"),
    pytest.param(2, "ml-latest-small", marks=pytest.mark.skipif(not ML_SMALL.exists(),
                                                                reason="ml-latest-small not present")),
])
def test_pipeline_bitwise_as_one_process_gathered_and_in_shards(tmp_path, world_size, name):
    want = _pipeline(name, tmp_path / "one.safetensors")
    assert want.refit and want.epochs > 0
    ranks = results(run_ranks(world_size, _pipeline_job, name, str(tmp_path)))
    table = want.model.user_embeddings
    covered = []
    for rank, (gathered, gathered_table, kept, users, user_ids, rows, failed) in enumerate(ranks):
        # Tuned values, epochs, histories: the same on every rank as in one process.
        assert gathered == _outcome(want) and kept == _outcome(want)
        assert torch.equal(gathered_table, table) if rank == 0 else gathered_table is None
        # Kept in shards: each rank holds its own users' refitted rows.
        assert np.array_equal(user_ids, want.model.user_ids[users]) and torch.equal(rows, table[users])
        covered += users.tolist()
        assert "failed on 1 rank(s): rank 1: IsADirectoryError" in failed
    assert sorted(covered) == list(range(len(table)))
    assert not (tmp_path / "blocked.safetensors").exists()  # no index naming a shard that is not there
    # Rank 0 wrote the gathered bundle: the very bytes of one process's.
    assert (tmp_path / "gathered.safetensors").read_bytes() == (tmp_path / "one.safetensors").read_bytes()
    # The shards and their index load as the same served model.
    one, sharded = load(tmp_path / "one.safetensors"), load(tmp_path / "sharded.safetensors")
    assert len(list(tmp_path.glob("sharded.shard-*-of-*.safetensors"))) == world_size
    assert sharded.recipe == one.recipe
    assert torch.equal(sharded.model.user_embeddings, one.model.user_embeddings)
    assert np.array_equal(sharded.model.user_ids, one.model.user_ids)
    assert np.array_equal(sharded.seen.indptr, one.seen.indptr) and np.array_equal(sharded.seen.items, one.seen.items)
    assert np.array_equal(sharded.item_support, one.item_support)
    ids = one.model.user_ids[[0, 7, len(table) - 1]]
    a, b = one.recommend(ids, k=5), sharded.recommend(ids, k=5)
    assert np.array_equal(a.item_ids, b.item_ids) and np.array_equal(a.scores, b.scores)


# --------------------------------------------------------------------------- the assignment
def test_assignment_is_deterministic_and_balanced():
    data = synthetic_ratings(3000, 200, 15, seed=4)
    keys, counts = user_key(data.user_ids), data.counts
    for world_size in (1, 2, 3, 7):
        owner = distributed.shard_users(keys, counts, world_size)
        assert np.array_equal(owner, distributed.shard_users(keys, counts, world_size))
        loads = np.bincount(owner, weights=counts + 1, minlength=world_size)
        assert owner.min() == 0 and owner.max() == world_size - 1
        assert loads.max() - loads.min() <= counts.max() + 1  # greedy: within one user's load
    # It depends on the users, not on where they sit in the data (distinct keys: no ties left).
    perm = np.random.default_rng(0).permutation(len(keys))
    assert np.array_equal(distributed.shard_users(keys[perm], counts[perm], 3), distributed.shard_users(keys, counts, 3)[perm])


# --------------------------------------------------------------------------- failures
def _failing_rank_job(rank):
    head, train, val = _synthetic()
    backend = distributed.ShardedBackend(BACKEND)
    if rank == 1:
        prepare = backend.inner.prepare

        def broken_prepare(*args, **kwargs):
            problem = prepare(*args, **kwargs)

            def broken(*_, **__):
                raise MemoryError("rank 1 ran out of memory")

            problem._call = problem._train = broken
            return problem

        backend.inner.prepare = broken_prepare
    return distributed.train_probes(head, train, val, LRS, REGS, HYP, backend)


def test_a_failing_rank_stops_the_others_with_a_clear_error():
    outcomes = run_ranks(3, _failing_rank_job)
    assert outcomes[1] == ("error", ("MemoryError", "rank 1 ran out of memory"))
    for rank in (0, 2):
        status, (kind, message) = outcomes[rank]
        assert status == "error" and kind == "DistributedError", outcomes[rank]
        assert f"rank {rank}:" in message and "failed" in message


def _input_errors_job(rank):
    head, train, val = _synthetic()
    raised = []
    try:  # rank 0 refuses the learning rates: "abort"
        distributed.train_probes(head, train, val, [0.1, -1.0], [0.0, 0.0], HYP, BACKEND)
    except InputError as exc:
        raised.append(str(exc))
    other_train, other_val = (train, val) if rank == 0 else (train.select_users(np.arange(train.n_users - 1)),
                                                            val.select_users(np.arange(val.n_users - 1)))
    try:  # rank 1 got other data: every rank raises
        distributed.train_probes(head, other_train, other_val, LRS, REGS, HYP, BACKEND)
    except InputError as exc:
        raised.append(str(exc))
    # The group is still usable: the next call runs as in one process.
    return raised, distributed.train_probes(head, train, val, LRS, REGS, HYP, BACKEND)


def test_input_errors_are_raised_on_every_rank_and_leave_the_group_usable():
    head, train, val = _synthetic()
    want = train_probes(head, train, val, LRS, REGS, HYP, BACKEND)
    for raised, probes in results(run_ranks(2, _input_errors_job)):
        assert len(raised) == 2
        assert "learning rates must be > 0" in raised[0] and "same arguments" in raised[1]
        _same_probes(probes, want)


def _val_of_rank0_users(weight):
    """``_synthetic`` with validation ratings of rank 0's users (of 2) only, each of ``weight``:
    rank 1's shard of val is empty."""
    head, train, val = _synthetic()
    owner = distributed.shard_users(user_key(train.user_ids), train.counts, 2)
    keep = owner[val.user_of_row()] == 0
    val = Ratings.from_coo(val.user_of_row()[keep], val.items[keep], val.ratings[keep],
                           np.full(int(keep.sum()), weight), n_users=val.n_users, n_items=val.n_items,
                           user_ids=val.user_ids, item_ids=val.item_ids)
    return head, train, val


def _val_on_one_rank_job(rank):
    raised = []
    try:  # no validation weight on any rank: every rank raises, none waits for the others
        distributed.train_probes(*_val_of_rank0_users(0.0), LRS, REGS, HYP, BACKEND)
    except InputError as exc:
        raised.append(str(exc))
    return raised, distributed.train_probes(*_val_of_rank0_users(1.0), LRS, REGS, HYP, BACKEND)


def test_validation_on_one_rank_only_is_validation_and_none_is_refused_on_every_rank():
    # The check reads the problem's global validation weight: rank 1's empty shard of val must not
    # refuse (or skip a reduction), and a val that weighs nothing anywhere must fail every rank.
    want = train_probes(*_val_of_rank0_users(1.0), LRS, REGS, HYP, BACKEND)
    with pytest.raises(InputError, match="val has no ratings of weight > 0"):
        train_probes(*_val_of_rank0_users(0.0), LRS, REGS, HYP, BACKEND)
    for raised, probes in results(run_ranks(2, _val_on_one_rank_job)):
        assert len(raised) == 1 and "val has no ratings of weight > 0" in raised[0]
        _same_probes(probes, want)


def test_sharded_backend_needs_a_process_group():
    with pytest.raises(InputError, match="process group"):
        distributed.ShardedBackend(BACKEND)


@pytest.fixture
def one_rank():
    """A gloo group of this process alone."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_in_process_and_a_wrapped_inner_backend(one_rank):
    head, train, val = _synthetic()
    want = train_probes(head, train, val, LRS, REGS, HYP, BACKEND)
    _same_probes(distributed.train_probes(head, train, val, LRS, REGS, HYP, BACKEND), want)
    # A wrapper whose problems are not retrain Problems would escape the reductions: refused.
    with pytest.raises(InputError, match="MeteredBackend"):
        distributed.train_probes(head, train, val, LRS, REGS, HYP, MeteredBackend(get_backend(BACKEND)))
    # Wrapped the other way round, it meters the sharded problem.
    metered = MeteredBackend(distributed.ShardedBackend(BACKEND))
    _same_probes(train_probes(head, train, val, LRS, REGS, HYP, metered), want)
    assert metered.calls


def test_init_distributed_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed("gloo") is False  # not under torchrun: nothing to do
    env = dict(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match="'gloo' or 'nccl'"):
        distributed.init_distributed("mpi")
    assert distributed.init_distributed("gloo") is True
    try:
        assert (dist.get_backend(), dist.get_world_size()) == ("gloo", 1)
        assert distributed.init_distributed("gloo") is False  # a group exists: it is the one used
    finally:
        dist.destroy_process_group()


def _small():
    data = synthetic_ratings(24, 20, 6, seed=3)
    train, val = data.split_per_user(0.25, seed=0)
    return random_head("mf", 20, d=3, seed=4), train, val


def _triton_job(rank):
    head, train, val = _small()
    return distributed.train_probes(head, train, val, LRS, REGS, HYP.replace(model="matrix_factorization_3"),
                                    "triton", return_embeddings=True)


@pytest.mark.skipif("triton" not in available_backends(), reason="no triton backend here")
def test_triton_fused_checkpoints_are_reduced_over_ranks():
    # The triton backend validates inside its training launch; the shards' sums must still meet.
    head, train, val = _small()
    want = train_probes(head, train, val, LRS, REGS, HYP.replace(model="matrix_factorization_3"), "triton",
                        return_embeddings=True)
    for rank, got in enumerate(results(run_ranks(2, _triton_job))):
        _same_probes(got, want)
        if rank == 0:
            assert all(torch.equal(g.embeddings, w.embeddings) for g, w in zip(got, want))


@pytest.mark.parametrize("owner,message", [
    ([0, 0, 0, 0, 0, 1], "user 5 has 1"),  # rank 1 of 1: trained by none, gathered as uninitialised memory
    ([0, 0, 0, 0, 0, -1], "user 5 has -1"),  # numpy's bincount ValueError
    ([0, 0, 0, 0, 0, 0.5], "user 5 has 0.5"),  # truncated to rank 0
    ([0, 0, 0, 0, 0], "covers 5 users, the data 6"),
])
def test_an_assignment_outside_the_ranks_is_refused(one_rank, owner, message):
    head, data = random_head("mf", 20, 3, seed=5), synthetic_ratings(6, 20, mean_ratings_per_user=5, seed=3)
    hyp = HyperParams(model="matrix_factorization_3", batch_size=3)
    with pytest.raises(InputError, match=message):
        distributed.train_embeddings(head, data, hyp, 2, BACKEND, owner=owner)
    # A whole assignment, even as floats, is the one-process result (the oracle).
    want = train_embeddings(head, data, hyp, 2, BACKEND)
    assert torch.equal(distributed.train_embeddings(head, data, hyp, 2, BACKEND, owner=[0.0] * 6), want)


def test_a_sharded_problem_checks_slots_before_it_sends_them(one_rank):
    # The followers' copy was made first (np.asarray(slots, dtype=np.int64)): ValueError for
    # ["a"], and a bool mask or 1.5 was queued for them as int64 slots before rank 0 refused it.
    head, train, val = _synthetic()
    backend = distributed.ShardedBackend(BACKEND)
    with backend.driving():
        problem = prepare(head, train, val, HYP, backend)
        problem.start(LRS, REGS, keep_best=True)
        for call in ("keep_best", "drop"):
            for bad in (["a"], [True, False, True, True], [1.5]):
                with pytest.raises(InputError, match="must be a 1-d array of probe slot indices"):
                    getattr(problem, call)(bad)
        assert [name for name, _, _ in backend._queue] == ["start"] and problem.n_probes == 4
        # So are the step sizes: np.asarray(["a"]) was queued for the followers before rank 0 refused it.
        for lrs, regs in ((["a"], [0.1]), ([0.1, 0.2], [0.1]), ([-0.1], [0.1])):
            with pytest.raises(InputError, match="^(lrs|learning rates)"):
                problem.start(lrs, regs)
        assert [name for name, _, _ in backend._queue] == ["start"] and problem.n_probes == 4


def _too_many_epochs_job(rank):
    head, data = random_head("mf", 20, 3, seed=5), synthetic_ratings(6, 20, mean_ratings_per_user=5, seed=3)
    heaviest = int(np.argmax(data.counts))
    owner = np.zeros(data.n_users, dtype=np.int64)
    owner[heaviest] = 1  # rank 0 holds lighter users only: its own bound on the epochs is looser
    most = MAX_STEPS // int(data.counts.max())  # batch 1: a step per rating
    assert MAX_STEPS // int(np.delete(data.counts, heaviest).max()) > most
    hyp = HyperParams(model="matrix_factorization_3", batch_size=1, max_epochs=most + 1, epochs_per_checkpoint=most + 1)
    backend = distributed.ShardedBackend(BACKEND)
    with backend.assigned(owner):
        try:
            distributed.train_probes(head, data, data, [0.01], [0.0], hyp, backend)
        except InputError as exc:
            return str(exc)


def test_a_sharded_batch_is_bounded_by_the_heaviest_user_of_every_rank():
    # Each shard's problem knew its own heaviest user only: rank 0 would train its users for
    # 2**62 / 6 epochs (never returning) while rank 1's kernel refused them and left the group.
    for message in results(run_ranks(2, _too_many_epochs_job)):
        assert message is not None and "hyp.max_epochs" in message and "heaviest user" in message
