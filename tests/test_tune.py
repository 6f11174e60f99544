"""The lock-step NLopt tuner: quality against a dense grid, batching, cache, journal, budgets, inputs."""
import json
import math
import threading

import numpy as np
import pytest

import retrain.tuner as tune_module
from retrain.hyperparams import lr_from_a, reg_from_b
from retrain.trainer import prepare, run_probes, train_probes
from retrain.tuner import Journal, problem_fingerprint, tune

from problems import BACKEND, planted_hyp, planted_problem

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


def test_k_lock_step_starts_need_max_evals_over_k_batches(problem, count_batches):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=24, n_starts=4, space_filling_first_batch=False,
                  backend=BACKEND)
    assert result.n_evals == 24
    assert result.n_batches == len(count_batches) == 6
    assert [len(batch) for batch in count_batches] == [4] * 6
    assert sorted({e.optimizer for e in result.history}) == [0, 1, 2, 3]
    assert [e.round for e in result.history] == [r for r in range(6) for _ in range(4)]

    count_batches.clear()
    one = tune(head, train, val, planted_hyp(), max_evals=24, n_starts=1, space_filling_first_batch=False,
               backend=BACKEND)
    assert one.n_batches == len(count_batches) == one.n_evals
    assert all(len(batch) == 1 for batch in count_batches)


def test_space_filling_first_batch_picks_the_best_starts(problem, count_batches):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=40, n_starts=4, backend=BACKEND)
    first = [e for e in result.history if e.round == 0]
    assert len(count_batches[0]) == len(first) == 8 and {e.optimizer for e in first} == {-1}
    assert first[0].point == (0.0, 0.0)
    assert result.n_evals == 40 and result.n_batches == len(count_batches)
    assert all(len(batch) == 4 for batch in count_batches[1:])


def test_runs_are_deterministic(problem):
    head, train, val = problem
    runs = [tune(head, train, val, planted_hyp(), max_evals=20, n_starts=4, backend=BACKEND) for _ in range(2)]
    assert [(e.point, e.loss) for e in runs[0].history] == [(e.point, e.loss) for e in runs[1].history]


def test_identical_points_are_trained_once(problem, count_batches):
    head, train, val = problem
    result = tune(head, train, val, planted_hyp(), max_evals=12, starts=[(0.5, 1.0), (0.5, 1.0), (0.5, 1.0)],
                  backend=BACKEND)
    # Three optimizers on the same path ask for the same points: one probe per batch.
    assert all(len(batch) == 1 for batch in count_batches)
    assert result.n_evals == result.n_batches == 12
    assert len({e.point for e in result.history}) == 12


def test_resume_from_a_journal_trains_none_of_its_points(problem, count_batches, tmp_path):
    head, train, val = problem
    journal = tmp_path / "runs" / "tune.jsonl"  # the folder is created
    kwargs = dict(n_starts=4, space_filling_first_batch=False, backend=BACKEND)
    first = tune(head, train, val, planted_hyp(), max_evals=16, journal=journal, **kwargs)
    assert len(journal.read_text().splitlines()) == 16

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
    assert len(journal.read_text().splitlines()) == 28

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
    lines = journal.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["problem"] for line in lines)


def test_a_journal_of_another_problem_or_a_bad_line_is_refused(problem, tmp_path):
    head, train, val = problem
    journal = tmp_path / "tune.jsonl"
    tune(head, train, val, planted_hyp(), max_evals=2, n_starts=1, space_filling_first_batch=False,
         journal=journal, backend=BACKEND)
    with pytest.raises(ValueError, match="another problem"):
        tune(head, train, val, planted_hyp(seed=1), max_evals=2, journal=journal, backend=BACKEND)
    journal.write_text("not json\n" + journal.read_text())
    with pytest.raises(ValueError, match="line 1"):
        Journal(journal, problem_fingerprint(head, train, val, planted_hyp())).load()


def test_divergence_is_a_finite_penalty(problem):
    head, train, val = problem
    # SGD with one rating per step blows up to NaN within an epoch once lr >= 1e2 or so.
    hyp = planted_hyp(optimizer="sgd", batch_size=1)
    result = tune(head, train, val, hyp, max_evals=12, n_starts=4, bounds=((-2, 6), (-3, 5)), backend=BACKEND)
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


def test_budgets(problem):
    head, train, val = problem
    # max_evals is global, the space-filling batch included.
    result = tune(head, train, val, planted_hyp(), max_evals=11, n_starts=4, backend=BACKEND)
    assert result.n_evals <= 11
    # After max_time no batch starts but the first.
    quick = tune(head, train, val, planted_hyp(), max_evals=64, n_starts=4, max_time=1e-9, backend=BACKEND)
    assert quick.n_batches == 1 and quick.n_evals == 8


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
])
def test_bad_arguments_raise_value_error(problem, kwargs, match):
    head, train, val = problem
    with pytest.raises(ValueError, match=match):
        tune(head, train, val, planted_hyp(), backend=BACKEND, **kwargs)


def test_a_tuning_run_prepares_the_data_once(problem, monkeypatch, count_batches):
    head, train, val = problem
    prepared = []

    def counting_prepare(*args, **kwargs):
        prepared.append(prepare(*args, **kwargs))
        return prepared[-1]

    monkeypatch.setattr(tune_module, "prepare", counting_prepare)
    result = tune(head, train, val, planted_hyp(), max_evals=64, n_starts=8, backend=BACKEND)
    assert result.n_batches == len(count_batches) > 5 and len(prepared) == 1
