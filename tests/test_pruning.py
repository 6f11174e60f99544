"""Pruning in run_probes: probes that cannot reach the target stop early, the others are untouched."""
import math

import numpy as np
import pytest

from retrain.errors import InputError
from retrain.trainer import Pruning, prepare, reachable_loss, run_probes

from problems import BACKEND, planted_hyp, planted_problem

# Plateaus (too small lr; too strong reg) that train to max_epochs, a slow probe near the
# optimum, probes that stop early near it, and one that stops at once (too large lr).
A = np.array([-2.0, -1.2, -0.4, 0.0, 0.5, 1.0, 1.5, 2.0, 2.2, 2.5, 2.5, 3.0])
B = np.array([4.9, -2.0, 1.0, 3.0, 3.5, 3.0, 2.5, 2.0, 1.0, -1.0, 2.5, 0.0])
PLATEAUS = slice(0, 5)
WINDOW = Pruning().window


@pytest.fixture(scope="module")
def prepared():
    hyp = planted_hyp(max_epochs=32, epochs_per_checkpoint=2)
    return prepare(*planted_problem(), hyp, BACKEND), hyp


def _final(result) -> float:
    return result.best_val_loss if result.stop_reason in ("patience", "max_epochs") else math.inf


def test_reachable_loss_extrapolates_the_fastest_recent_fall():
    history = [(0, 1.0), (2, 0.8), (4, 0.7), (6, 0.65)]  # falls of 0.1, 0.05, 0.025 per epoch
    assert reachable_loss(history, 16, 4) == pytest.approx(0.65 - 10 * 0.1)
    assert reachable_loss(history, 16, 2) == pytest.approx(0.65 - 10 * 0.05)  # the first fall forgotten
    assert reachable_loss([(0, 1.0), (2, 1.2), (4, 1.1)], 8, 4) == pytest.approx(1.1 - 4 * 0.05)
    assert reachable_loss([(0, 1.0), (2, 1.2), (4, 1.1)], 5, 4) == pytest.approx(1.0)  # the best so far bounds it
    assert reachable_loss([(0, 1.0), (2, 1.2), (4, 1.3)], 8, 1) == pytest.approx(1.0)  # rising: no fall to extrapolate
    assert reachable_loss([(0, 1.0)], 8, 4) == -math.inf  # no rate known: never pruned


def test_the_target_is_the_rank_th_known_loss_or_a_margin_over_the_best():
    assert Pruning(known=(3.0, 1.0), rank=2).target(np.array([2.0]), 4) == 2.0
    assert Pruning(known=(1.0, 1.01), rank=2, margin=0.05).target(np.array([]), 4) == pytest.approx(1.05)
    assert Pruning(known=(1.0,), rank=3).target(np.array([2.0, math.inf]), 4) == math.inf  # too few known
    # known_at: each loss counts from its epoch on.
    later = Pruning(known=(3.0,), rank=2, known_at=((4, 1.0), (8, 2.0)))
    assert [later.target(np.array([]), e) for e in (2, 4, 6, 8)] == [math.inf, 3.0, 3.0, 2.0]


@pytest.mark.parametrize("rank, margin, group", [(1, 0.0, None), (3, 0.02, None), (2, 0.0, 4)],
                         ids=["best", "top3-margin", "memory-groups"])
def test_pruned_probes_could_not_have_reached_the_target_and_the_others_are_unchanged(prepared, rank, margin,
                                                                                     group):
    problem, hyp = prepared
    order = slice(None) if group is None else slice(None, None, -1)  # groups: the plateaus last
    lrs, regs = 1e-3 * 10.0 ** A[order], 1e-5 * 10.0 ** B[order]
    # In groups, the finished probes of the earlier groups are known to the later ones.
    budget = None if group is None else group * problem.state_bytes(1, False)
    full = run_probes(problem, lrs, regs, hyp, memory_budget=budget)  # the oracle: every probe to its end
    pruned = run_probes(problem, lrs, regs, hyp, memory_budget=budget, pruning=Pruning(rank=rank, margin=margin))
    finals = np.sort([_final(r) for r in full])
    target = max(finals[rank - 1], (1 + margin) * finals[0])
    stopped = [i for i, r in enumerate(pruned) if r.stop_reason == "pruned"]
    assert stopped, "the plateau probes should be pruned"
    for i, (f, p) in enumerate(zip(full, pruned)):
        if i in stopped:
            assert _final(f) > target  # it could not have reached the target
            assert p.history == f.history[:len(p.history)]  # the same training, cut short
            assert p.best_val_loss >= f.best_val_loss and p.epochs_trained < f.epochs_trained
            assert reachable_loss(p.history, hyp.max_epochs, WINDOW) > target
        else:  # bitwise what training it to its end gives
            assert (p.history, p.best_epoch, p.best_val_loss, p.stop_reason) == \
                (f.history, f.best_epoch, f.best_val_loss, f.stop_reason)
    if group is not None:  # the last group holds plateaus only: pruned by what the earlier groups found
        assert all(r.stop_reason == "pruned" for r in pruned[-group:])
    # The best ``rank`` losses of the batch are those of the full run.
    assert np.sort([_final(r) for r in pruned])[:rank].tolist() == finals[:rank].tolist()


def test_known_losses_set_the_target(prepared):
    """On probes that all train to max_epochs (no probe of the batch finishes before the end)."""
    problem, hyp = prepared
    lrs, regs = 1e-3 * 10.0 ** A[PLATEAUS], 1e-5 * 10.0 ** B[PLATEAUS]
    full = run_probes(problem, lrs, regs, hyp)
    assert {r.stop_reason for r in full} == {"max_epochs"}
    # A known loss above every probe's final one: each could still beat it, none is pruned.
    kept = run_probes(problem, lrs, regs, hyp, pruning=Pruning(known=(max(_final(r) for r in full) + 1e-3,)))
    assert [(r.history, r.stop_reason) for r in kept] == [(r.history, r.stop_reason) for r in full]
    # A known loss far below: every probe is pruned at its first checkpoint after the init.
    low = run_probes(problem, lrs, regs, hyp, pruning=Pruning(known=(0.0,)))
    assert [(r.stop_reason, r.epochs_trained) for r in low] == [("pruned", hyp.epochs_per_checkpoint)] * len(lrs)
    assert [r.history for r in low] == [r.history[:2] for r in full]


def test_a_batch_trained_in_part_stops_its_probes_where_the_whole_batch_did(prepared):
    """A resumed batch: the probes that had finished are given as ``known_at`` (their final loss
    at the epoch they stopped) and the others train alone; each stops where it stopped in the
    whole batch, bit for bit.  Known from the start instead, they prune some probes sooner."""
    problem, hyp = prepared
    lrs, regs = 1e-3 * 10.0 ** A, 1e-5 * 10.0 ** B
    pruning = Pruning(rank=2, margin=0.02)
    whole = run_probes(problem, lrs, regs, hyp, pruning=pruning)
    done = [i for i, r in enumerate(whole) if r.stop_reason in ("patience", "max_epochs")]
    cut = sorted(whole[i].epochs_trained for i in done)[len(done) // 2]  # the run was interrupted here
    before = [i for i in done if whole[i].epochs_trained <= cut]
    rest = [i for i in range(len(A)) if i not in before]
    assert before and any(whole[i].stop_reason == "pruned" for i in rest)

    resumed = run_probes(problem, lrs[rest], regs[rest], hyp, pruning=Pruning(
        rank=2, margin=0.02, known_at=tuple((whole[i].epochs_trained, whole[i].best_val_loss) for i in before)))
    expected = [(whole[i].history, whole[i].best_epoch, whole[i].best_val_loss, whole[i].stop_reason) for i in rest]
    assert [(r.history, r.best_epoch, r.best_val_loss, r.stop_reason) for r in resumed] == expected

    early = run_probes(problem, lrs[rest], regs[rest], hyp, pruning=Pruning(
        rank=2, margin=0.02, known=tuple(whole[i].best_val_loss for i in before)))
    assert [r.history for r in early] != [whole[i].history for i in rest]


@pytest.mark.parametrize("group", [None, 5], ids=["one-group", "memory-groups"])
def test_on_finish_reports_each_probe_once_where_it_stops(prepared, group):
    problem, hyp = prepared
    lrs, regs = 1e-3 * 10.0 ** A, 1e-5 * 10.0 ** B
    budget = None if group is None else group * problem.state_bytes(1, False)
    seen = []

    def on_finish(index, result):  # a copy of what is final when it is reported
        seen.append((index, list(result.history), result.best_epoch, result.best_val_loss, result.stop_reason))

    results = run_probes(problem, lrs, regs, hyp, memory_budget=budget, pruning=Pruning(rank=2), on_finish=on_finish)
    assert sorted(i for i, *_ in seen) == list(range(len(A)))  # each probe once
    assert {r.stop_reason for r in results} >= {"pruned", "patience"}
    for index, history, best_epoch, best_val_loss, stop_reason in seen:
        r = results[index]
        assert (history, best_epoch, best_val_loss, stop_reason) == (r.history, r.best_epoch, r.best_val_loss,
                                                                     r.stop_reason)
    # In the order they stopped (memory groups one after another).
    firsts = [i for i, *_ in seen]
    stops = [(i // group if group else 0, results[i].epochs_trained) for i in firsts]
    assert stops == sorted(stops)


def test_on_finish_is_not_called_for_a_probe_the_deadline_stopped(prepared):
    problem, hyp = prepared
    seen = []
    results = run_probes(problem, [1e-5, 1e-5], [1e-5, 1e-5], hyp, deadline=0.0,
                         on_finish=lambda index, result: seen.append(index))
    assert [r.stop_reason for r in results] == ["deadline"] * 2 and seen == []


@pytest.mark.parametrize("kwargs,message", [
    # rank 0: an IndexError at the first checkpoint
    (dict(rank=0), r"Pruning.rank must be an integer in \[1, 2\*\*63 - 1\], got 0"),
    (dict(known_at=((4, 1.0), 2.0)), "Pruning.known_at must hold"),
    (dict(known_at=((-1, 1.0),)), "Pruning.known_at epoch"),
    (dict(known_at=((4, math.nan),)), "Pruning.known_at loss"),
    (dict(window=0), r"Pruning.window must be an integer in \[1, 2\*\*63 - 1\], got 0"),  # read as every interval
    (dict(window=-2), "Pruning.window"),
    (dict(margin=math.nan), "Pruning.margin must be a finite number >= 0"),
    (dict(rank=1.5), "Pruning.rank"),
])
def test_a_malformed_pruning_is_refused_where_it_is_made(kwargs, message):
    with pytest.raises(InputError, match=message):
        Pruning(**kwargs)
