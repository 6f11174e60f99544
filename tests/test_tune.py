"""The lock-step NLopt tuner: quality against a dense grid, batching, cache, journal, budgets, inputs."""
import dataclasses
import itertools
import json
import logging
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import retrain.tuner as tune_module
from retrain.contract import FLOAT32_MAX
from retrain.data import Ratings
from retrain.errors import InputError
from retrain.hyperparams import HyperParams, lr_from_a, reg_from_b
from retrain.trainer import prepare, run_probes, train_probes
from retrain.tuner import (A_MAX, A_MIN, B_MAX, FINGERPRINT_VERSION, JOURNAL_FORMAT, Journal, check_bounds,
                           problem_fingerprint, tune)

from problems import BACKEND, planted_hyp, planted_problem, random_ratings

@pytest.fixture(scope="module")
def problem():
    return planted_problem()


@pytest.fixture
def count_batches(monkeypatch):
    """Record the (a, b) points of every train_probes call the tuner makes."""
    calls = []

    def counting(problem, lrs, regs, hyp, **kwargs):
        calls.append([(math.log10(lr / 1e-3), math.log10(reg / 1e-5)) for lr, reg in zip(lrs, regs)])
        return run_probes(problem, lrs, regs, hyp, **kwargs)

    monkeypatch.setattr(tune_module, "run_probes", counting)
    return calls


def test_tune_is_within_one_percent_of_a_dense_grid(problem):
    head, train, val = problem
    hyp = planted_hyp()
    grid_a, grid_b = np.meshgrid(np.linspace(-2, 3, 21), np.linspace(-3, 5, 21), indexing="ij")
    grid = train_probes(head, train, val, 1e-3 * 10.0 ** grid_a.ravel(), 1e-5 * 10.0 ** grid_b.ravel(), hyp,
                        backend=BACKEND)
    grid_best = min(p.best_val_loss for p in grid)

    result = tune(head, train, val, hyp, max_evals=128, backend=BACKEND)
    assert result.val_loss <= 1.01 * grid_best, (result.val_loss, grid_best)
    assert -2 <= result.a <= 3 and -3 <= result.b <= 5
    best = min(result.history, key=lambda e: e.loss)
    assert (result.a, result.b, result.epochs) == (best.a, best.b, best.epochs)
    assert result.lr == pytest.approx(lr_from_a(result.a)) and result.reg == pytest.approx(reg_from_b(result.b))
    assert result.hyp.learning_rate == result.lr and result.hyp.regularization == result.reg
    # The tuned point reproduces its loss when trained on its own.
    (alone,) = train_probes(head, train, val, [result.lr], [result.reg], hyp, backend=BACKEND)
    assert alone.best_val_loss == pytest.approx(result.val_loss, rel=1e-5)
    assert alone.best_epoch == result.epochs


def _plain_bobyqa(problem, hyp, start, step, max_evals):
    """The oracle: NLopt's BOBYQA with tune's settings, one point per run_probes call, no gate."""
    import nlopt

    prepared, asked = prepare(*problem, hyp, BACKEND), []

    def objective(x, grad):
        asked.append(tuple(x))
        (probe,) = run_probes(prepared, [lr_from_a(x[0])], [reg_from_b(x[1])], hyp)
        return probe.best_val_loss

    opt = tune_module._configured(nlopt, nlopt.LN_BOBYQA, np.array([-2.0, -3.0]), np.array([3.0, 5.0]),
                                  np.asarray(step), max_evals)
    opt.set_min_objective(objective)
    try:
        opt.optimize(list(start))
    except nlopt.RoundoffLimited:
        pass
    return asked


def test_one_search_asks_what_plain_nlopt_asks_and_trains_its_opening_in_one_batch(problem, count_batches):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=14, starts=[(0.5, 1.0)], backend=BACKEND)
    step = tune_module.INITIAL_STEP * np.array([5.0, 8.0])
    expected = _plain_bobyqa(problem, planted_hyp(), (0.5, 1.0), step, 14)
    assert [tune_module._key(e.point) for e in result.history] == [tune_module._key(p) for p in expected]
    # BOBYQA's 2n + 1 = 5 interpolation points do not depend on the values: one batch; then a
    # point per batch.
    assert [len(batch) for batch in count_batches] == [5] + [1] * (len(expected) - 5)
    assert result.n_batches == len(count_batches)


def test_explicit_starts_search_at_once_and_batch_their_rounds(problem, count_batches):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=24, n_starts=4, space_filling_first_batch=False,
                  backend=BACKEND)
    assert result.n_evals == 24
    assert len(count_batches[0]) == 20  # the four openings
    assert all(len(batch) <= 4 for batch in count_batches[1:])
    assert sorted({e.optimizer for e in result.history}) == [0, 1, 2, 3]
    assert [e.round for e in result.history] == sorted(e.round for e in result.history)

    count_batches.clear()
    one = tune(head, train, val, planted_hyp(), max_evals=24, n_starts=1, space_filling_first_batch=False,
               backend=BACKEND)
    assert one.n_batches == len(count_batches) == one.n_evals - 4
    assert [len(batch) for batch in count_batches] == [5] + [1] * (one.n_batches - 1)


def test_the_space_filling_and_zoomed_batches_are_wide_and_the_searches_start_from_the_best(problem,
                                                                                              count_batches):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=96, width=24, backend=BACKEND)
    first = [e for e in result.history if e.round == 0]
    zoomed = [e for e in result.history if e.round == 1]
    assert len(count_batches[0]) == len(first) == 24 and {e.optimizer for e in first} == {-1}
    assert len(count_batches[1]) == len(zoomed) == 24 and {e.optimizer for e in zoomed} == {-1}
    assert first[0].point == (0.0, 0.0)
    assert all(len(batch) <= 24 for batch in count_batches)
    # Searches start while a point within START_MARGIN of the best lies clear of earlier starts: the
    # run may end under max_evals once they have converged.
    assert 48 < result.n_evals <= 96 and result.n_batches == len(count_batches)
    # The zoomed batch lies in the box of the best ceil(0.15 * 24) = 4 first-batch points,
    # widened by one first trust radius (half a sample spacing of the first batch).
    best4 = np.array([e.point for e in sorted(first, key=lambda e: e.loss)[:4]])
    pad = 0.5 * np.array([5.0, 8.0]) / math.sqrt(24)
    lo, hi = np.maximum(best4.min(0) - pad, [-2, -3]), np.minimum(best4.max(0) + pad, [3, 5])
    assert all(np.all(lo <= e.point) and np.all(e.point <= hi) for e in zoomed)
    # Search 0 starts at the best point of both batches: its opening (the start +- one step along
    # each axis, the step half the zoomed batch's spacing) trains in the third batch.
    start = np.array(min(first + zoomed, key=lambda e: e.loss).point)
    step = tune_module.STEP_FACTOR * (hi - lo) / math.sqrt(24)
    start = np.clip(start, [-2, -3] + 0.5 * np.array([5.0, 8.0]) / math.sqrt(24),
                    [3, 5] - 0.5 * np.array([5.0, 8.0]) / math.sqrt(24))
    third = {tune_module._key(p) for p in count_batches[2]}
    for axis in range(2):
        assert tune_module._key(start + step * np.eye(2)[axis]) in third
    assert len({e.optimizer for e in result.history}) >= 2  # -1 and at least one search


def test_zoom_box_covers_the_best_points_widened_within_the_bounds():
    points = np.array([[0.0, 0.0], [0.2, 0.8], [0.9, 0.1], [0.5, 0.5], [0.6, 0.4]] + [[0.1 * i, 0.95] for i in range(9)])
    losses = np.array([5.0, 1.0, 9.0, 2.0, 1.0] + [7.0] * 9)
    # 14 points: the best ceil(0.15 * 14) = 3 are 1, 4 (ties: first) and 3.
    lower, upper = tune_module.zoom_box(points, losses, np.array([0.1, 0.3]), np.zeros(2), np.ones(2))
    assert lower == pytest.approx([0.1, 0.1]) and upper == pytest.approx([0.7, 1.0])  # 0.8 + 0.3 clipped to 1


def test_the_next_start_is_the_best_point_far_from_better_ones_and_earlier_starts():
    points = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 3.0], [2.0, 2.0], [5.0, 5.0]])
    losses = np.array([1.0, 1.001, 1.002, 1.004, 1.007])
    step = np.array([1.0, 2.0])
    none = np.zeros((0, 2))
    assert tune_module.next_start_point(points, losses, none, step).tolist() == [0.0, 0.0]
    # 1 lies within one step of the better 0; 2 is 1.5 steps from it (b is scaled by 2).
    assert tune_module.next_start_point(points, losses, np.array([[0.0, 0.0]]), step).tolist() == [0.0, 3.0]
    # An earlier start within one step rules a point out even when it is the best near it.
    assert tune_module.next_start_point(points, losses, np.array([[0.0, 0.0], [0.0, 2.5]]), step).tolist() == \
        [2.0, 2.0]
    # 4 is 0.7 % worse than the best: more than START_MARGIN = 0.5 %.
    assert tune_module.next_start_point(points, losses, points[:4], step) is None
    assert tune_module.next_start_point(none, np.zeros(0), none, step) is None


def test_the_default_width_follows_the_device():
    class Device:
        def __init__(self, kind):
            self.device = __import__("torch").device(kind)

    assert tune_module.default_width(Device("cpu")) == tune_module.CPU_WIDTH == 64
    assert tune_module.default_width(Device("cuda")) == tune_module.GPU_WIDTH == 256


def test_runs_are_deterministic(problem):
    head, train, val = problem
    runs = [tune(head, train, val, planted_hyp(), max_evals=20, n_starts=4, backend=BACKEND) for _ in range(2)]
    assert [(e.point, e.loss) for e in runs[0].history] == [(e.point, e.loss) for e in runs[1].history]


def test_identical_points_are_trained_once(problem, count_batches):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=12, starts=[(0.5, 1.0), (0.5, 1.0), (0.5, 1.0)],
                  backend=BACKEND)
    # Three searches on the same path ask for the same points: each point is trained once (the
    # shared opening of 5 points, then one probe per batch).
    assert [len(batch) for batch in count_batches] == [5] + [1] * 7
    assert result.n_evals == 12 and result.n_batches == 8
    assert len({e.point for e in result.history}) == 12


def _entries(journal) -> list[str]:
    """The entry lines of a journal, after its header (checked)."""
    header, *lines = journal.read_text().splitlines()
    assert json.loads(header) == {"format": JOURNAL_FORMAT, "fingerprint_version": FINGERPRINT_VERSION}
    return lines


def test_resume_from_a_journal_trains_none_of_its_points(problem, count_batches, tmp_path):
    head, train, val = problem
    journal = tmp_path / "runs" / "tune.jsonl"  # the folder is created
    kwargs = dict(n_starts=4, space_filling_first_batch=False, backend=BACKEND)
    first = tune(head, train, val, planted_hyp(), max_evals=16, journal=journal, **kwargs)
    assert len(_entries(journal)) == 16

    count_batches.clear()
    again = tune(head, train, val, planted_hyp(), max_evals=16, journal=journal, **kwargs)
    assert count_batches == []
    assert not any(e.trained for e in again.history)
    assert [(e.point, e.loss) for e in again.history] == [(e.point, e.loss) for e in first.history]

    count_batches.clear()
    longer = tune(head, train, val, planted_hyp(), max_evals=28, journal=journal, **kwargs)
    journaled = {e.point for e in first.history}
    trained = [p for batch in count_batches for p in batch]
    assert len(trained) == 12
    assert not any(tune_module._key(p) in {tune_module._key(q) for q in journaled} for p in trained)
    assert len(_entries(journal)) == 28

    # Resuming ends where an uninterrupted run ends.
    fresh = tune(head, train, val, planted_hyp(), max_evals=28, **kwargs)
    assert [(e.point, e.loss) for e in longer.history] == [(e.point, e.loss) for e in fresh.history]


def test_a_journal_cut_mid_line_still_loads(problem, count_batches, tmp_path):
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    kwargs = dict(n_starts=2, space_filling_first_batch=False, backend=BACKEND)
    tune(head, train, val, planted_hyp(), max_evals=8, journal=journal, **kwargs)
    text = journal.read_text()
    journal.write_text(text[: len(text) - 25])  # a killed run: the last line is cut short

    count_batches.clear()
    resumed = tune(head, train, val, planted_hyp(), max_evals=8, journal=journal, **kwargs)
    assert sum(len(batch) for batch in count_batches) == 1  # only the cut point is trained again
    assert sum(e.trained for e in resumed.history) == 1
    lines = _entries(journal)
    assert len(lines) == 8 and all(json.loads(line)["problem"] for line in lines)


def test_a_journal_of_another_problem_or_a_bad_line_is_refused(problem, tmp_path):
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    tune(head, train, val, planted_hyp(), max_evals=2, n_starts=1, space_filling_first_batch=False,
         journal=journal, backend=BACKEND)
    with pytest.raises(ValueError, match="another problem"):
        tune(head, train, val, planted_hyp(seed=1), max_evals=2, journal=journal, backend=BACKEND)
    header, *lines = journal.read_text().splitlines()
    journal.write_text("\n".join([header, "not json", *lines]) + "\n")
    with pytest.raises(ValueError, match="line 2 is not a journal entry"):
        Journal(journal, problem_fingerprint(head, train, val, planted_hyp())).load()


def _with_user_ids(data: Ratings, user_ids) -> Ratings:
    return Ratings.from_coo(data.user_of_row(), data.items, data.ratings, data.weights, n_users=data.n_users,
                            n_items=data.n_items, user_ids=user_ids, item_ids=data.item_ids)


def test_problems_whose_arrays_have_the_same_bytes_have_other_fingerprints():
    # User ids 97 and 98 + 99 * 2^32 (int64) are the bytes of "a" and "bc" (numpy's <U2): the old
    # fingerprint hashed the bytes alone, so the two problems hashed the same, yet their user keys,
    # and so their inits and losses, differ.
    head, train, val = planted_problem(n_users=2)
    numbers, texts = np.array([97, 98 + (99 << 32)], dtype=np.int64), np.array(["a", "bc"])
    assert numbers.tobytes() == texts.tobytes()
    by_number = (_with_user_ids(train, numbers), _with_user_ids(val, numbers))
    by_text = (_with_user_ids(train, texts), _with_user_ids(val, texts))
    for a, b in zip(by_number, by_text):  # every array the fingerprint hashes: the same bytes
        for field in ("indptr", "items", "ratings", "weights", "user_ids"):
            assert getattr(a, field).tobytes() == getattr(b, field).tobytes()
    assert problem_fingerprint(head, *by_number, planted_hyp()) != problem_fingerprint(head, *by_text, planted_hyp())


@pytest.mark.parametrize("first_line,message", [
    # As an older retrain wrote it: entries only, no header.
    (json.dumps({"a": 0.0, "b": 0.0, "lr": 1e-3, "reg": 1e-5, "loss": 1.0, "val_loss": 1.0, "epochs": 4,
                 "diverged": False, "problem": "0123456789abcdef"}),
     "was written by an older retrain, whose fingerprints of the problem this version cannot check: delete or rename"),
    (json.dumps({"format": JOURNAL_FORMAT, "fingerprint_version": 3}),
     "was written with fingerprint version 3, this retrain checks version 2: delete or rename it"),
    ('{"not": "a header"}', "line 1 is not a tuning journal's header")])
def test_a_journal_of_another_fingerprint_version_is_refused(problem, tmp_path, first_line, message):
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    journal.write_text(first_line + "\n")
    with pytest.raises(InputError, match=message):
        tune(head, train, val, planted_hyp(), max_evals=2, journal=journal, backend=BACKEND)
    assert journal.read_text() == first_line + "\n"  # left as it was
    journal.write_text(first_line)  # a whole line without its newline: the same
    with pytest.raises(InputError, match=message):
        Journal(journal, "0123456789abcdef").load()


def test_a_journal_killed_while_its_header_was_written_starts_afresh(tmp_path):
    journal = tmp_path / "tune.jsonl"
    journal.write_text('{"format": "retrain.tu')
    assert Journal(journal, "0123456789abcdef").load() == {}
    assert _entries(journal) == []


@pytest.mark.parametrize("ending", ["\n", ""])
def test_a_header_only_journal_loads_empty_and_its_header_is_parsed_once(tmp_path, monkeypatch, ending):
    # A run killed before its first point finished; without the newline, one killed as it wrote it.
    header = json.dumps({"format": JOURNAL_FORMAT, "fingerprint_version": FINGERPRINT_VERSION})
    journal = tmp_path / "tune.jsonl"
    journal.write_text(header + ending)
    parsed = []
    loads = json.loads
    monkeypatch.setattr(tune_module.json, "loads", lambda text, **kw: parsed.append(bytes(text)) or loads(text, **kw))
    assert Journal(journal, "0123456789abcdef").load() == {}
    assert parsed == [header.encode()]  # the header was read twice: once to see it is JSON, once to check it
    assert journal.read_text() == header + "\n"  # the newline is completed, nothing else written


def test_divergence_is_a_finite_penalty(problem):
    head, train, val = problem
    # SGD with one rating per step blows up to NaN within an epoch once lr >= 1e2 or so.
    hyp = planted_hyp(optimizer="sgd", batch_size=1)
    result = tune(head, train, val, hyp, max_evals=24, n_starts=4, bounds=((-2, 6), (-3, 5)), backend=BACKEND)
    diverged = [e for e in result.history if e.diverged]
    assert diverged, "lr up to 1e3 with SGD should diverge"
    (untrained,) = train_probes(head, train, val, [1e-12], [0.0], hyp.replace(max_epochs=1), backend=BACKEND)
    penalty = 2 * untrained.history[0][1] + 1
    assert all(e.loss == pytest.approx(penalty) and math.isfinite(e.loss) for e in diverged)
    assert all(e.loss < penalty for e in result.history if not e.diverged)
    assert not result.history[[e.loss for e in result.history].index(result.val_loss)].diverged


def test_gradient_algorithms_train_their_finite_difference_points_in_the_same_batch(problem, count_batches):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=15, algorithm="LD_MMA", starts=[(0.0, 0.0)],
                  backend=BACKEND)
    step_a, step_b = tune_module.FD_STEP * 5, tune_module.FD_STEP * 8
    first = sorted(count_batches[0])
    expected = sorted([(0, 0), (step_a, 0), (-step_a, 0), (0, step_b), (0, -step_b)])
    assert np.allclose(first, expected)
    assert result.n_evals <= 15 and all(len(batch) <= 5 for batch in count_batches)


def test_finite_difference_gradient_is_central_and_one_sided_at_a_bound():
    class Gate:  # answers at once with a known function
        def evaluate(self, opt_id, points):
            return [3 * a * a + 2 * b for a, b in points]

    objective = tune_module._objective(Gate(), 0, None, np.array([-2.0, -3.0]), np.array([3.0, 5.0]))
    grad = np.zeros(2)
    assert objective([1.0, 0.5], grad) == 4.0
    assert np.allclose(grad, [6.0, 2.0])  # central differences are exact on a quadratic
    objective([3.0, 5.0], grad)
    h = tune_module.FD_STEP * 5
    assert np.allclose(grad, [18.0 - 3 * h, 2.0])  # one-sided at the upper bounds


def test_a_failing_batch_ends_every_optimizer_and_is_raised(problem, monkeypatch):
    head, train, val = problem
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return run_probes(*args, **kwargs)

    monkeypatch.setattr(tune_module, "run_probes", failing)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="out of memory"):
        tune(head, train, val, planted_hyp(), max_evals=40, n_starts=4, backend=BACKEND)
    assert threading.active_count() == before


def test_max_evals_is_global(problem):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=11, n_starts=4, backend=BACKEND)
    assert result.n_evals == 11  # the space-filling batch (5) and the openings included


@pytest.fixture
def ticking_clock(monkeypatch):
    """``time.monotonic`` advancing one second per reading (tuner and trainer both read it)."""
    ticks = itertools.count()
    monkeypatch.setattr(time, "monotonic", lambda: float(next(ticks)))


def test_max_time_stops_probes_at_a_checkpoint_and_unfinished_points_are_not_counted(problem, tmp_path,
                                                                                     monkeypatch):
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    kwargs = dict(max_evals=24, n_starts=2, space_filling_first_batch=False, backend=BACKEND)
    stopped = []

    def spying(problem, lrs, regs, hyp, **kw):
        assert kw["deadline"] is not None  # the budget reaches every checkpoint
        results = run_probes(problem, lrs, regs, hyp, **kw)
        stopped.extend((math.log10(r.lr / 1e-3), math.log10(r.reg / 1e-5)) for r in results if not r.finished)
        return results

    monkeypatch.setattr(tune_module, "run_probes", spying)
    ticks = itertools.count()
    with monkeypatch.context() as clock:
        clock.setattr(time, "monotonic", lambda: float(next(ticks)))
        cut = tune(head, train, val, planted_hyp(), max_time=30, journal=journal, **kwargs)
    assert stopped, "the 30-tick budget should stop some probes inside a batch"
    lines = [json.loads(line) for line in _entries(journal)]
    assert len(lines) == cut.n_evals < 24
    unfinished = {tune_module._key(p) for p in stopped}
    assert not unfinished & {tune_module._key((e["a"], e["b"])) for e in lines}
    assert not unfinished & {tune_module._key(e.point) for e in cut.history}

    # The unfinished points were not journaled: resuming trains them and ends where a run
    # without the time limit ends.
    resumed = tune(head, train, val, planted_hyp(), journal=journal, **kwargs)
    fresh = tune(head, train, val, planted_hyp(), **kwargs)
    assert [(e.point, e.loss) for e in resumed.history] == [(e.point, e.loss) for e in fresh.history]
    assert unfinished <= {tune_module._key(e.point) for e in resumed.history if e.trained}


def test_a_budget_that_lets_nothing_finish_is_an_error(problem, ticking_clock):
    head, train, val = problem
    with pytest.raises(ValueError, match="max_time"):
        tune(head, train, val, planted_hyp(), max_evals=16, max_time=2, backend=BACKEND)


def test_a_run_where_every_point_diverged_is_flagged(problem, caplog):
    head, train, val = problem
    hyp = planted_hyp(optimizer="sgd", batch_size=1)
    with caplog.at_level("WARNING", logger="retrain.tuner"):
        result = tune(head, train, val, hyp, max_evals=8, bounds=((5, 6), (-3, 5)), backend=BACKEND)
    assert all(e.diverged for e in result.history) and result.all_diverged
    assert result.val_loss == math.inf  # never the penalty passed off as a validation loss
    assert "all 8 points diverged" in caplog.text
    assert not tune(head, train, val, planted_hyp(), max_evals=8, backend=BACKEND).all_diverged


def test_a_head_whose_init_loss_overflows_is_named_not_blamed_on_the_learning_rates(problem, caplog, tmp_path):
    # Item biases of 3e38 overflow every prediction's square: the init's loss is not finite, every
    # probe diverges at epoch 0. Its penalty was 2 * 0.0 + 1 (the partial sum of no user read as the
    # init's loss) and the warning said to narrow the bounds towards smaller learning rates.
    head, train, val = problem
    big = dataclasses.replace(head, item_bias=torch.full_like(head.item_bias, 3e38))
    journal = tmp_path / "journal.jsonl"
    with caplog.at_level("WARNING", logger="retrain.tuner"):
        result = tune(big, train, val, planted_hyp(), max_evals=6, backend=BACKEND, journal=journal)
    assert result.all_diverged and result.val_loss == math.inf
    assert [e.loss for e in result.history] == [FLOAT32_MAX] * 6  # finite, worse than any real loss
    assert "all 6 points diverged at epoch 0: the untrained init's validation loss is not finite" in caplog.text
    assert "smaller learning rates" not in caplog.text
    resumed = tune(big, train, val, planted_hyp(), max_evals=6, backend=BACKEND, journal=journal)
    assert [e.loss for e in resumed.history] == [FLOAT32_MAX] * 6 and not any(e.trained for e in resumed.history)


def test_an_optimum_on_a_bound_is_flagged(problem, caplog):
    head, train, val = problem
    # lr at most 3e-5 for 16 epochs barely moves from the init: the largest lr is best.
    with caplog.at_level("WARNING", logger="retrain.tuner"):
        result = tune(head, train, val, planted_hyp(), max_evals=12, bounds=((-2, -1.5), (-3, 5)), backend=BACKEND)
    assert "a_hi" in result.at_bound and result.bounds == ((-2.0, -1.5), (-3.0, 5.0))
    assert abs(result.a - (-1.5)) <= tune_module.FD_STEP * 0.5
    assert "a_hi" in caplog.text and "widen the bounds" in caplog.text


def test_a_journal_in_use_by_another_process_is_refused(problem, tmp_path):
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); sys.stdin.read()", str(journal)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match="in use by another tuning run"):
            tune(head, train, val, planted_hyp(), max_evals=4, journal=journal, backend=BACKEND)
    finally:
        holder.communicate("")
    assert journal.read_text() == ""  # the refused run wrote nothing
    result = tune(head, train, val, planted_hyp(), max_evals=4, journal=journal, backend=BACKEND)
    assert len(_entries(journal)) == result.n_evals == 4


def test_a_journal_holds_its_lock_for_the_whole_run(problem, tmp_path, monkeypatch):
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    refused = []

    def second_writer(*args, **kwargs):  # another run starting while this one trains
        with pytest.raises(ValueError, match="in use") as error:
            Journal(journal, "another problem").open()
        refused.append(error.value)
        return run_probes(*args, **kwargs)

    monkeypatch.setattr(tune_module, "run_probes", second_writer)
    tune(head, train, val, planted_hyp(), max_evals=8, journal=journal, backend=BACKEND)
    assert refused


def test_every_journal_line_must_be_of_this_problem(problem, tmp_path):
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    tune(head, train, val, planted_hyp(), max_evals=4, journal=journal, backend=BACKEND)
    lines = journal.read_text().splitlines()
    foreign = json.loads(lines[2]) | {"problem": "0123456789abcdef"}
    journal.write_text("\n".join(lines[:2] + [json.dumps(foreign)] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match="line 3 was written for another problem"):
        tune(head, train, val, planted_hyp(), max_evals=4, journal=journal, backend=BACKEND)


@pytest.mark.parametrize("field,value", [("loss", math.nan), ("loss", math.inf), ("a", math.nan),
                                         ("diverged", "false"), ("diverged", 0)])
def test_a_journal_line_with_a_non_finite_loss_or_a_non_bool_flag_is_refused(problem, tmp_path, field, value):
    """A NaN loss used to come back as the tuned optimum (``val_loss`` NaN); ``"false"`` read as diverged."""
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    tune(head, train, val, planted_hyp(), max_evals=3, journal=journal, backend=BACKEND)
    lines = journal.read_text().splitlines()
    assert json.loads(lines[1])["loss"] > 0 and json.loads(lines[1])["diverged"] is False  # what the writer writes
    lines[1] = json.dumps(json.loads(lines[1]) | {field: value})
    journal.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="line 2 is not a journal entry"):
        tune(head, train, val, planted_hyp(), max_evals=3, journal=journal, backend=BACKEND)


@pytest.mark.parametrize("kwargs, match", [
    (dict(bounds=((3, -2), (-3, 5))), "lo < hi"),
    (dict(bounds=((-2, 3),)), "bounds"),
    (dict(bounds=((-2, math.inf), (-3, 5))), "finite"),
    (dict(max_evals=0), "max_evals"),
    (dict(max_evals=2.5), "max_evals"),
    (dict(algorithm="LN_NOPE"), "unknown NLopt algorithm"),
    (dict(algorithm="AUGLAG"), "subsidiary"),
    (dict(n_starts=0), "n_starts"),
    (dict(starts=[(10.0, 0.0)]), "starts"),
    (dict(max_time=0), "max_time"),
    (dict(max_time=math.nan), "max_time"),
    (dict(width=0), "width"),
    (dict(n_starts=2.0), "n_starts"),
    (dict(bounds="wide"), "bounds"),
])
def test_bad_arguments_raise_value_error(problem, kwargs, match):
    head, train, val = problem
    with pytest.raises(ValueError, match=match):
        tune(head, train, val, planted_hyp(), backend=BACKEND, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(starts=[(0.0, 0.0), (1.0,)]), r"starts must be a non-empty list of \(a, b\)"),  # numpy's ragged error
    (dict(starts=[(0.0, 0.0, 0.0)]), "starts must be"),  # "cannot reshape"
    (dict(starts="ab"), "starts must be"),  # "could not convert string to float"
    (dict(starts=0), "starts must be"),  # a TypeError from len()
    (dict(max_time=True), "max_time must be a number, got True"),  # trained with 1 s
])
def test_malformed_starts_and_max_time_are_input_errors(problem, kwargs, match):
    head, train, val = problem
    with pytest.raises(InputError, match=match):
        tune(head, train, val, planted_hyp(), backend=BACKEND, **kwargs)


def test_max_time_may_be_a_numpy_number_or_inf_and_one_start_a_pair(problem):
    """np.float32(100) was refused as not > 0, inf (no limit) raised naming the trainer's deadline;
    ``starts=(a, b)`` is one start."""
    head, train, val = problem
    one = tune(head, train, val, planted_hyp(), max_evals=3, backend=BACKEND, max_time=np.float32(100),
               starts=(0.5, 0.5))
    pair = tune(head, train, val, planted_hyp(), max_evals=3, backend=BACKEND, starts=[(0.5, 0.5)])
    unlimited = tune(head, train, val, planted_hyp(), max_evals=3, backend=BACKEND, max_time=math.inf,
                     starts=[(0.5, 0.5)])
    assert one.history[0].point == pair.history[0].point == (0.5, 0.5)
    assert [e.loss for e in one.history] == [e.loss for e in pair.history] == [e.loss for e in unlimited.history]


def test_a_tuning_run_prepares_the_data_once(problem, monkeypatch, count_batches):
    head, train, val = problem
    prepared = []

    def counting_prepare(*args, **kwargs):
        prepared.append(prepare(*args, **kwargs))
        return prepared[-1]

    monkeypatch.setattr(tune_module, "prepare", counting_prepare)
    result = tune(head, train, val, planted_hyp(), max_evals=64, n_starts=8, backend=BACKEND)
    assert result.n_batches == len(count_batches) > 5 and len(prepared) == 1


def test_plots_of_a_tuning_run(problem, tmp_path):
    pytest.importorskip("matplotlib")
    from retrain.plots import plot_search_traces, plot_tuning_landscape

    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=24, width=12, backend=BACKEND)
    plot_tuning_landscape(tmp_path / "landscape.png", result.history, result.bounds, best=(result.a, result.b))
    trace = [(e.time + 1e-3, min(x.loss for x in result.history[: i + 1])) for i, e in enumerate(result.history)]
    plot_search_traces(tmp_path / "traces.png", {"tune": trace, "nothing yet": [(0.1, math.inf)]})
    for name, size in (("landscape.png", (7.5, 7)), ("traces.png", (8, 5))):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (round(size[0] * 110), round(size[1] * 110))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landscape.png", "traces.png"]  # no temporary left
    with pytest.raises(ValueError, match="finite"):
        plot_search_traces(tmp_path / "none.png", {"diverged": [(0.1, math.inf)]})



def test_a_best_point_outside_the_start_box_starts_one_search_only():
    # The zoomed batch reaches the bounds while searches start inside them: a best point there is
    # clipped to a start farther than a step from itself.  It used to be chosen again after every
    # search (which cost nothing: its points were cached), and tuning never ended (ML-100k u3).
    point = lambda a, b, loss: tune_module.Evaluation(a, b, loss, loss, 4, False, 0, -1, 0.0)
    history = [point(2.98, 0.0, 0.5), point(0.0, 0.0, 0.9), point(1.0, 1.0, 0.502)]
    starts = tune_module.Starts(history, np.array([0.1, 0.1]), np.array([-1.5, -2.5]), np.array([2.5, 4.5]))
    assert starts().tolist() == [2.5, 0.0]  # the best point, clipped into the box
    assert starts().tolist() == [1.0, 1.0]  # then the next best far from it, within START_MARGIN
    assert starts() is None  # not the first again; 0.9 is more than START_MARGIN worse


def test_pruning_the_space_filling_batches_changes_no_search(problem, monkeypatch, tmp_path):
    """The oracle is the same run with every probe trained to its end: the same points in the same
    order, the same best point, the same values but for the pruned points, which report more."""
    head, train, val = problem
    hyp = planted_hyp(max_epochs=32)
    journal = tmp_path / "tune.jsonl"
    pruned = tune(head, train, val, hyp, max_evals=48, backend=BACKEND, journal=journal)
    with monkeypatch.context() as patch:
        patch.setattr(tune_module, "run_probes", lambda *args, pruning=None, **kw: run_probes(*args, **kw))
        full = tune(head, train, val, hyp, max_evals=48, backend=BACKEND)
    assert not any(e.pruned for e in full.history)
    stopped = [e for e in pruned.history if e.pruned]
    assert stopped and all(e.round < 2 for e in stopped)  # only the two space-filling batches prune
    assert [e.point for e in pruned.history] == [e.point for e in full.history]
    assert (pruned.a, pruned.b, pruned.val_loss, pruned.epochs) == (full.a, full.b, full.val_loss, full.epochs)
    for p, f in zip(pruned.history, full.history):
        if p.pruned:
            assert p.loss >= f.loss > pruned.val_loss and p.epochs_trained < f.epochs_trained
        else:
            assert (p.loss, p.epochs, p.epochs_trained) == (f.loss, f.epochs, f.epochs_trained)
    lines = [json.loads(line) for line in _entries(journal)]  # in the order the probes finished
    assert sorted((line["a"], line["b"], line["pruned"]) for line in lines) == \
        sorted((e.a, e.b, e.pruned) for e in pruned.history)
    # Replayed from the journal: the same points, values and marks, nothing trained.
    again = tune(head, train, val, hyp, max_evals=48, backend=BACKEND, journal=journal)
    assert not any(e.trained for e in again.history)
    assert [(e.point, e.loss, e.pruned, e.epochs_trained) for e in again.history] == \
        [(e.point, e.loss, e.pruned, e.epochs_trained) for e in pruned.history]


def _tune_killed(monkeypatch, cut: int, first_call_only: bool, *args, **kwargs) -> None:
    """``tune(*args, **kwargs)`` killed (KeyboardInterrupt) once ``cut`` probes have finished: in its
    first ``run_probes`` call when ``first_call_only``, else in all its calls together."""
    calls, finished = [], []

    def interrupted(problem, lrs, regs, hyp, on_finish=None, **kw):
        calls.append(len(lrs))

        def finish(index, result):
            on_finish(index, result)
            if len(calls) == 1 or not first_call_only:
                finished.append(index)
            if len(finished) == cut:
                raise KeyboardInterrupt
        return run_probes(problem, lrs, regs, hyp, on_finish=finish, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(tune_module, "run_probes", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tune(*args, **kwargs)


def test_an_interrupted_batch_keeps_its_finished_probes_and_resumes_to_the_same_search(problem, monkeypatch,
                                                                                        tmp_path):
    """Killed in the middle of the pruned space-filling batch: the probes that had finished are in
    the journal; the resumed run trains only the others, which stop where they stopped in the
    whole batch, and ends as an uninterrupted run ends."""
    head, train, val = problem
    hyp, kwargs = planted_hyp(max_epochs=32), dict(max_evals=48, backend=BACKEND)
    whole = tune(head, train, val, hyp, **kwargs)
    first_batch = [e for e in whole.history if e.round == 0]
    assert any(e.pruned for e in first_batch)
    journal, cut = tmp_path / "tune.jsonl", len(first_batch) // 2
    _tune_killed(monkeypatch, cut, True, head, train, val, hyp, journal=journal, **kwargs)  # in the first batch
    assert len(_entries(journal)) == cut  # nothing finished is lost

    trained = []
    with monkeypatch.context() as patch:
        patch.setattr(tune_module, "run_probes", lambda problem, lrs, *a, **kw: (trained.append(len(lrs)),
                                                                                 run_probes(problem, lrs, *a, **kw))[1])
        resumed = tune(head, train, val, hyp, journal=journal, **kwargs)
    assert trained[0] == len(first_batch) - cut
    assert sum(not e.trained for e in resumed.history) == cut
    assert [(e.point, e.loss, e.pruned, e.epochs_trained) for e in resumed.history] == \
        [(e.point, e.loss, e.pruned, e.epochs_trained) for e in whole.history]
    assert (resumed.a, resumed.b, resumed.val_loss) == (whole.a, whole.b, whole.val_loss)


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_a_batch_interrupted_in_any_memory_group_resumes_to_the_same_search(problem, monkeypatch, tmp_path, cut):
    """A memory budget of 5 probes splits the pruned 12-point batches into groups; a run killed at
    the ``cut``-th finished probe (in the first group, the second, ...) resumes to the uninterrupted
    run: every point with the same loss, pruning mark and epochs (the resumed batch trains in the
    whole batch's groups, so that each probe's pruning knows what it knew there)."""
    head, train, val = problem
    hyp, kwargs = planted_hyp(max_epochs=32), dict(max_evals=48, backend=BACKEND)
    per_probe = prepare(head, train, val, hyp, BACKEND).state_bytes(1, keep_best=False)
    monkeypatch.setattr(tune_module, "default_memory_budget", lambda device: 5 * per_probe)
    whole = tune(head, train, val, hyp, **kwargs)
    assert any(e.pruned for e in whole.history) and whole.n_batches >= 2
    journal = tmp_path / "tune.jsonl"
    _tune_killed(monkeypatch, cut, False, head, train, val, hyp, journal=journal, **kwargs)
    resumed = tune(head, train, val, hyp, journal=journal, **kwargs)
    assert sum(not e.trained for e in resumed.history) == cut
    assert [(e.point, e.loss, e.pruned, e.epochs_trained) for e in resumed.history] == \
        [(e.point, e.loss, e.pruned, e.epochs_trained) for e in whole.history]


def test_memory_budget_pins_the_memory_groups_of_a_pruned_batch(problem, monkeypatch, caplog):
    """A pruned batch split into memory groups prunes by its groups, so the result follows the
    budget: the default budget changes with the machine (and the free GPU memory), a given one
    does not.  Oracle: the run under a default budget of the same size."""
    head, train, val = problem
    hyp, kwargs = planted_hyp(max_epochs=32), dict(max_evals=48, backend=BACKEND)
    per_probe = prepare(head, train, val, hyp, BACKEND).state_bytes(1, keep_best=False)
    key = lambda result: [(e.point, e.loss, e.pruned, e.epochs_trained) for e in result.history]
    with caplog.at_level(logging.WARNING, logger="retrain"):
        pinned = tune(head, train, val, hyp, memory_budget=5 * per_probe, **kwargs)
    assert "pass memory_budget=" in caplog.text and "memory groups of 5" in caplog.text
    one_group = tune(head, train, val, hyp, **kwargs)  # this machine's default holds a whole batch
    assert key(one_group) != key(pinned)
    monkeypatch.setattr(tune_module, "default_memory_budget", lambda device: 5 * per_probe)
    assert key(tune(head, train, val, hyp, **kwargs)) == key(pinned)
    monkeypatch.setattr(tune_module, "default_memory_budget", lambda device: per_probe)  # another machine
    assert key(tune(head, train, val, hyp, memory_budget=5 * per_probe, **kwargs)) == key(pinned)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="memory_budget"):
            tune(head, train, val, hyp, memory_budget=bad, **kwargs)


@pytest.mark.parametrize("empty", ["no ratings", "zero weights"])
def test_a_validation_set_that_validates_nothing_is_refused(problem, empty):
    """Every loss would be 0, so the untrained init (epoch 0) would win: an InputError, not epochs 0."""
    head, train, val = problem
    if empty == "no ratings":
        val = val._subset_rows(np.zeros(val.nnz, dtype=bool))  # the same users, none with a rating
    else:
        val = Ratings.from_coo(val.user_of_row(), val.items, val.ratings, np.zeros(val.nnz), n_users=val.n_users,
                               n_items=val.n_items, user_ids=val.user_ids, item_ids=val.item_ids)
    with pytest.raises(InputError, match="val has no ratings of weight > 0"):
        tune(head, train, val, planted_hyp(), max_evals=2, backend=BACKEND)


@pytest.mark.parametrize("bounds,before", [
    (((41.0, 43.0), (-2.0, 2.0)), "an InputError on lrs from the first batch, naming no bound"),
    (((-2.0, 2.0), (40.0, 45.0)), "the same, on regs"),
    (((-60.0, -50.0), (-2.0, 2.0)), "every lr was 0 in float32: the untrained init won, as a tuned optimum"),
    (((0.0, 400.0), (-2.0, 2.0)), "an OverflowError from 10 ** 400"),
])
def test_bounds_that_leave_float32_are_refused_before_any_training(problem, bounds, before):
    head, train, val = problem
    with pytest.raises(InputError, match=r"bounds must keep lr = 1e-3 \* 10\^a and reg = 1e-5 \* 10\^b inside float32"):
        tune(head, train, val, planted_hyp(), max_evals=2, backend=BACKEND, bounds=bounds)


def test_the_widest_bounds_float32_holds_train():
    """At the edges of the allowed box lr and reg are finite and non-zero in float32 (the oracle: numpy)."""
    lower, upper = check_bounds(((A_MIN, A_MAX), (-3.0, B_MAX)))
    for lr in (lr_from_a(lower[0]), lr_from_a(upper[0])):
        assert 0 < np.float32(lr) and lr <= np.finfo(np.float32).max
    assert reg_from_b(upper[1]) <= np.finfo(np.float32).max


def test_a_pruned_journal_entry_is_trained_again_for_a_search_that_does_not_prune(problem, tmp_path):
    """Another search resuming a journal (here: one start on a point the space-filling batch
    pruned) used to get the pruned point's best-so-far, an upper bound, as its loss; the oracle is
    ``train_probes`` of that point to its end."""
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    first = tune(head, train, val, planted_hyp(), max_evals=40, journal=journal, backend=BACKEND)
    pruned = [e for e in first.history if e.pruned]
    assert pruned, "the space-filling batch prunes its plateau points"
    point = pruned[0]
    again = tune(head, train, val, planted_hyp(), max_evals=1, journal=journal, backend=BACKEND,
                 starts=[point.point])
    (want,) = train_probes(head, train, val, [point.lr], [point.reg], planted_hyp(), backend=BACKEND)
    (got,) = again.history
    assert got.trained and not got.pruned and got.point == point.point
    assert got.loss == want.best_val_loss < point.loss
    # The search that wrote it, resumed, still replays the journal without training (unchanged).
    assert not any(e.trained for e in tune(head, train, val, planted_hyp(), max_evals=40, journal=journal,
                                           backend=BACKEND).history)


def test_a_head_like_head_tunes_with_a_journal_that_knows_it(tmp_path, count_batches):
    """``problem_fingerprint`` read ``item_vectors``: a HeadLike with a journal raised AttributeError.
    Its journal resumes without training, and another head's journal is refused."""
    from test_reference import SoftplusHead
    head, other = SoftplusHead(9, 3, seed=1), SoftplusHead(9, 3, seed=2)
    train, val = random_ratings(8, 9, seed=2).split_per_user(0.3, seed=0)
    hyp = HyperParams(model="matrix_factorization_3", batch_size=2, max_epochs=2, patience=1)
    journal = tmp_path / "tune.jsonl"
    first = tune(head, train, val, hyp, max_evals=3, journal=journal)
    count_batches.clear()
    again = tune(head, train, val, hyp, max_evals=3, journal=journal)
    assert count_batches == [] and [e.loss for e in again.history] == [e.loss for e in first.history]
    with pytest.raises(InputError, match="written for another problem"):
        tune(other, train, val, hyp, max_evals=3, journal=journal)
