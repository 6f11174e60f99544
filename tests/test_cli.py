"""The command line end to end on tiny synthetic data, and its exit statuses.

The demo, fold-in and bench run as real processes (``python -m retrain``); the pretrain/tune/run
chain and the bad inputs call ``retrain.cli.main`` in this process, since each process spends
seconds importing torch, and a few bad inputs also run as real processes.  Exit statuses: 2 and
one ``error:`` line for a mistake in the input, 1 and a traceback for a bug, 130 when interrupted.
"""
import json
import logging
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

import retrain
from retrain import protocol_split
from retrain.cli import main
from retrain.data import Ratings, synthetic_ratings
from retrain.demo import load_ratings, run_demo
from retrain.errors import InputError
from retrain.heads import Model
from retrain.report import rmse_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
USERS, MODEL, SEED = 150, "matrix_factorization_4", 2
TINY = ["--users", USERS, "--model", MODEL, "--seed", SEED]
TUNING = ["--max-evals", 6, "--n-starts", 2]
ROWS = ("global mean", "item biases only", "base model", "retrained users", "fold-in of new users",
        "closed-form ridge fold-in")


def command(*args) -> list[str]:
    return [sys.executable, "-m", "retrain", *map(str, args)]


def cli(*args) -> subprocess.CompletedProcess:
    # Without TRITON_INTERPRET (conftest sets it): 'auto' and 'bench' must not pick the interpreter.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(command(*args), capture_output=True, text=True, env=env, timeout=600)


def in_process(capsys, *args) -> int:
    """``main(args)`` in this process; argparse's exit becomes the returned status."""
    capsys.readouterr()  # drop earlier output
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_:
        return exit_.code


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def check_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert width >= 300 and height >= 300 and len(data) > 10_000, (width, height, len(data))


def tiny_split():
    """The split the CLI makes of its synthetic data with TINY's settings (defaults otherwise)."""
    return protocol_split(synthetic_ratings(n_users=USERS, n_items=100, seed=SEED), seed=SEED)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    # Seed 2: six evaluations on 150 users can end on a bound of b (seeds 0, 3 and 4 do, with or
    # without damping), and the warning saying so would be the demo's only line on stderr.
    proc = cli("demo", *TINY, *TUNING, "--out", out, "--quiet")
    check_ok(proc)
    return proc, out


def test_demo_prints_the_table_and_writes_every_artifact(demo):
    proc, out = demo
    assert proc.stderr.strip() == ""  # --quiet: no bars, no log lines
    for name in ROWS:
        assert name in proc.stdout
    for quantity in ("tuned learning rate", "tuned L2 regularisation", "epochs", "tuning wall time",
                     "evaluations / probe batches", "probe throughput"):
        assert quantity in proc.stdout

    report = (out / "report.md").read_text()
    assert "| predictor | RMSE, known users (test part) | RMSE, new users (test part) |" in report
    for name in ROWS:
        assert name in report
    assert "## Protocol" in report and "tuning_landscape.png" in report
    check_png(out / "tuning_landscape.png")
    check_png(out / "validation_curve.png")

    split = tiny_split()
    model = Model.load(out / "model.safetensors")
    assert model.head.name == MODEL
    assert np.array_equal(model.user_ids, split.pretrain.user_ids)  # the known users only
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()[1:]]  # after the header
    assert len(journal) == 6 and all({"a", "b", "loss"} <= set(entry) for entry in journal)
    recipe = retrain.load(out / "model.safetensors").recipe  # the recipe lives in the model file
    assert recipe.hyp.num_users == split.pretrain.n_users and recipe.epochs >= 1 and recipe.refit
    assert not (out / "model.safetensors.hyp.json").exists()


def test_run_demo_returns_the_rows_of_the_table_it_prints(tmp_path):
    data, source = load_ratings(n_users=USERS, seed=SEED)
    result = run_demo(data, source, model=MODEL, seed=SEED, out=tmp_path / "run", max_evals=4, n_starts=2)
    assert len(result.rows) == len(ROWS) and all(row.name.startswith(n) for row, n in zip(result.rows, ROWS))
    assert rmse_table(result.rows) in result.text and f"artifacts in {result.out}/" in result.text
    assert (result.out / "report.md").is_file() and result.out == tmp_path / "run"


@pytest.mark.parametrize("new_users,test,part", [(0.2, 0.0, "known"),  # no test part at all
                                                  (0.05, 0.01, "new")])  # 0.01 of each new user: none
def test_run_demo_refuses_a_split_without_test_ratings(tmp_path, new_users, test, part):
    # Every RMSE of the report (or the new users' column) was NaN, after the whole pipeline had run.
    data, source = load_ratings(n_users=USERS, seed=SEED)
    with pytest.raises(InputError, match=f"test part of the {part} users is empty"):
        run_demo(data, source, model=MODEL, seed=SEED, out=tmp_path / "run", new_users=new_users, test=test)
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("argument,value", [("seed", 2**33), ("max_evals", 0), ("damping", -1.0), ("max_time", -1.0)])
def test_run_demo_checks_every_argument_before_any_work(tmp_path, argument, value, monkeypatch):
    # They were found only after the pretraining (minutes on a large file), the folder made.
    monkeypatch.setattr("retrain.demo.pretrain", lambda *a, **k: pytest.fail("pretrained before the checks"))
    data, source = load_ratings(n_users=USERS, seed=SEED)
    with pytest.raises(InputError, match=argument):
        run_demo(data, source, model=MODEL, out=tmp_path / "run", **{argument: value})
    assert not (tmp_path / "run").exists()


def test_fold_in_of_known_users_reproduces_their_retrained_rows(demo, tmp_path):
    _, out = demo
    split = tiny_split()
    users = [3, 17, 42]
    ratings = split.pretrain.union(split.val).select_users(users)  # what the refit trained these users on
    csv = tmp_path / "ratings.csv"
    rows = [f"{ratings.user_ids[u]},{ratings.item_ids[i]},{r}"
            for u, i, r in zip(ratings.user_of_row(), ratings.items, ratings.ratings)]
    csv.write_text("userId,movieId,rating\n" + "\n".join(rows) + "\n")

    proc = cli("fold-in", "--model", out / "model.safetensors", "--ratings", csv, "--out", tmp_path / "emb.safetensors",
               "--recommendations", tmp_path / "top.csv", "--k", 5, "--quiet")
    check_ok(proc)
    folded = load_file(tmp_path / "emb.safetensors")
    model = Model.load(out / "model.safetensors")
    assert folded["user_ids"].tolist() == ratings.user_ids.tolist()
    # the refit is the serving recipe, and both processes train on the backend auto picks: the same bits
    np.testing.assert_array_equal(folded["embeddings"].numpy(), model.user_embeddings[users].numpy())

    top = [line.split(",") for line in (tmp_path / "top.csv").read_text().splitlines()[1:]]
    assert len(top) == 3 * 5
    seen = set(zip(ratings.user_ids[ratings.user_of_row()].tolist(), ratings.item_ids[ratings.items].tolist()))
    assert not seen & {(int(user), int(item)) for user, _, item, _ in top}


def test_fold_in_seed_overrides_the_recipes_seed_and_defaults_to_it(demo, tmp_path, capsys, restore_logger):
    # --help says the seed keys the init and the schedule; it was ignored for a model with a recipe
    _, out = demo
    served = retrain.load(out / "model.safetensors")
    ratings = Ratings.from_ids(["new-a", "new-a", "new-b"], served.head.item_ids[[0, 1, 2]], [4.0, 3.0, 5.0])
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating\n" + "".join(
        f"{ratings.user_ids[u]},{ratings.item_ids[i]},{r}\n"
        for u, i, r in zip(ratings.user_of_row(), ratings.items, ratings.ratings)))
    recipe = served.recipe
    assert recipe.hyp.seed == SEED
    for seed in (None, 7):
        emb = tmp_path / f"emb-{seed}.safetensors"
        args = [] if seed is None else ["--seed", seed]
        assert in_process(capsys, "fold-in", "--model", out / "model.safetensors", "--ratings", csv, "--out", emb,
                          "--backend", "cpu", "--quiet", *args) == 0
        hyp = recipe.hyp if seed is None else recipe.hyp.replace(seed=seed)
        want = retrain.fold_in(served.head, ratings.with_items(served.head.item_ids), hyp, recipe.epochs,
                               backend="cpu")
        np.testing.assert_array_equal(load_file(emb)["embeddings"].numpy(), want.numpy())


def test_a_fold_in_whose_recommendations_meet_a_full_disk_writes_neither_file(demo, tmp_path, capsys, monkeypatch):
    import errno

    import retrain.files as files
    _, out = demo
    emb = tmp_path / "emb.safetensors"
    emb.write_bytes(b"the previous fold-in")
    written = []

    def fsync(fd):  # the embeddings' temporary is written, the recommendations' meets a full disk
        written.append(fd)
        if len(written) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fsync)
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating\nnew-user,0,4.0\nnew-user,1,3.0\n")
    code = in_process(capsys, "fold-in", "--model", out / "model.safetensors", "--ratings", csv, "--out", emb,
                      "--recommendations", tmp_path / "top.csv", "--quiet")
    assert code == 2 and "No space left" in capsys.readouterr().err
    assert emb.read_bytes() == b"the previous fold-in" and not (tmp_path / "top.csv").exists()
    assert sorted(os.listdir(tmp_path)) == ["emb.safetensors", "ratings.csv"]  # no temporary left


def test_fold_in_drops_items_the_model_lacks_and_flags_users_left_without_ratings(demo, tmp_path, capsys,
                                                                                  restore_logger):
    _, out = demo
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating\n1,99999,4.0\n2,99999,4.0\n2,1,3.0\n")
    assert in_process(capsys, "fold-in", "--model", out / "model.safetensors", "--ratings", csv, "--out",
                      tmp_path / "emb.safetensors", "--quiet") == 0
    printed = capsys.readouterr().out
    assert "dropped 2 ratings on items the model does not know" in printed
    assert ("1 of 2 users (user ids 1) have no rating on an item the model knows: they get the initial embedding"
            in printed)
    assert load_file(tmp_path / "emb.safetensors")["user_ids"].tolist() == [1, 2]


def test_pretrain_tune_run_chain_resumes_from_the_journal(tmp_path, capsys, restore_logger):
    # In this process (main() itself): each subprocess would spend seconds importing torch.
    base, journal, retrained = tmp_path / "base.safetensors", tmp_path / "journal.jsonl", tmp_path / "new.safetensors"
    assert in_process(capsys, "pretrain", *TINY, "--out", base) == 0
    assert "validation RMSE" in capsys.readouterr().out and base.is_file()

    assert in_process(capsys, "tune", "--model", base, "--journal", journal, "--plot", tmp_path / "landscape.png",
                      *TINY[:2], *TUNING, "--damping", 2, "--quiet") == 0
    assert "6 evaluations in" in capsys.readouterr().out and len(journal.read_text().splitlines()) == 1 + 6
    check_png(tmp_path / "landscape.png")

    # run tunes the same subsample with the same settings (damping included): every point comes from the journal.
    assert in_process(capsys, "run", "--model", base, "--journal", journal, "--out", retrained, *TINY[:2], *TUNING,
                      "--damping", 2, "--quiet") == 0
    out = capsys.readouterr().out
    assert "6 evaluations in 0 probe batches" in out and "test RMSE" in out and "damping 2," in out
    assert Model.load(retrained).n_users == tiny_split().pretrain.n_users
    recipe = retrain.load(retrained).recipe
    assert recipe.epochs >= 1 and recipe.hyp.damping == 2.0 and not (tmp_path / "new.safetensors.hyp.json").exists()


def test_run_under_torchrun_writes_the_bundle_of_one_process(tmp_path, capsys, restore_logger):
    pytest.importorskip("torch.distributed.run")
    base, one, two = tmp_path / "base.safetensors", tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert in_process(capsys, "pretrain", *TINY, "--out", base, "--quiet") == 0
    run = ["run", "--model", base, *TINY[:2], *TUNING, "--backend", "cpu"]
    assert in_process(capsys, *run, "--out", one, "--quiet") == 0
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RANK", "WORLD_SIZE", "MASTER_ADDR")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "retrain", *map(str, run), "--out", str(two)],
                          capture_output=True, text=True, env=env, timeout=600)
    check_ok(proc)
    assert proc.stdout.count("retrained ") == 1 and "sharded over 2 ranks" in proc.stdout  # rank 0 reports
    assert two.read_bytes() == one.read_bytes()  # bitwise the same user table, ids and recipe


def test_commands_that_do_not_shard_refuse_to_run_under_torchrun(monkeypatch, capsys, restore_logger):
    for name, value in dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(name, value)
    assert in_process(capsys, "tune", "--model", "missing.safetensors", "--quiet") == 2
    assert capsys.readouterr().err.strip() == ("retrain tune (rank 1): error: only 'run' shards over ranks: run "
                                               "'tune' in one process, not under torchrun")


def test_bench_compares_backends_with_the_eager_loop():
    proc = cli("bench", "--users", USERS, "--model", MODEL, "--probes", 2, "--epochs", 1, "--baseline-steps", 3,
               "--quiet")
    check_ok(proc)
    assert "| backend " in proc.stdout and "eager PyTorch loop" in proc.stdout and "× eager loop" in proc.stdout


@pytest.mark.parametrize("count", ["probes", "epochs", "baseline_steps"])
def test_run_bench_refuses_counts_below_one(count):
    # 0 timed nothing and printed a table of zeros; -1 probes raised inside torch.logspace.
    from retrain.bench import run_bench

    for value in (0, -1):
        with pytest.raises(InputError, match=rf"{count} must be an integer in \[1, 2\*\*63 - 1\]"):
            run_bench(model=MODEL, users=USERS, backends=["reference"], **{count: value})


def test_metered_backend_records_what_the_trainer_saw():
    from retrain.backends import get_backend
    from retrain.hyperparams import HyperParams
    from retrain.pretrain import pretrain
    from retrain.progress import MeteredBackend
    from retrain.trainer import train_probes

    train, val = synthetic_ratings(n_users=40, n_items=30, mean_ratings_per_user=8, seed=3).split_per_user(0.25, seed=0)
    head = pretrain(train, "matrix_factorization_4", iterations=2).head
    hyp = HyperParams(model="matrix_factorization_4", max_epochs=6, epochs_per_checkpoint=2, patience=1)
    backend = MeteredBackend(get_backend("auto"))
    with backend.stage("probes"):
        several = train_probes(head, train, val, [0.01, 0.05, 0.3], [1e-4, 1e-3, 1e-2], hyp, backend)
        (one,) = train_probes(head, train, val, [0.05], [1e-3], hyp.replace(epochs_per_checkpoint=1), backend)

    assert backend.batches("probes") == [0, 1]
    recorded = [(c.epoch, float(c.losses[0])) for c in backend.checkpoints if c.batch == 1]
    assert [epoch for epoch, _ in recorded] == [epoch for epoch, _ in one.history]
    assert [loss for _, loss in recorded] == pytest.approx([loss for _, loss in one.history], rel=1e-12)
    work, _ = backend.totals("probes", [0])
    # Each probe trains up to its last checkpoint; P shrinks as probes stop.
    assert work == train.nnz * sum(r.epochs_trained for r in several)


# Each bad input as a function of a folder holding malformed.csv and not_a_model.safetensors, and
# what its error line must name.
BAD_INPUTS = {
    "missing data file": (lambda tmp: ["demo", "--data", tmp / "missing.csv"], "not found"),
    "malformed data file": (lambda tmp: ["demo", "--data", tmp / "malformed.csv"], "malformed.csv:3"),
    "unknown model name": (lambda tmp: ["demo", "--model", "transformer_9"], "transformer_9"),
    "unknown option": (lambda tmp: ["demo", "--no-such-option"], "--no-such-option"),
    "bad option value": (lambda tmp: ["demo", "--max-evals", "0"], "--max-evals"),
    "negative seed": (lambda tmp: ["pretrain", "--seed", "-1"], "--seed"),
    "non-integer seed": (lambda tmp: ["demo", "--seed", "1.5"], "--seed"),
    # the contract uses the seed mod 2**32; it was refused only once the data was loaded and split
    "seed beyond 32 bits": (lambda tmp: ["tune", "--model", tmp / "missing.safetensors", "--seed", 2**32],
                            "argument --seed: expected an integer >= 0 and <= 4294967295, got '4294967296'"),
    "non-integer users": (lambda tmp: ["demo", "--users", "16.0"], "--users"),
    "split fraction out of range": (lambda tmp: ["demo", "--users", 40, "--test", "1.2"], "test must be"),
    "split fractions adding up to 1": (lambda tmp: ["pretrain", "--users", 40, "--val", "0.5", "--test", "0.5"],
                                       "val + test"),
    "nan regularisation": (lambda tmp: ["pretrain", "--users", 40, "--reg", "nan"], "--reg"),
    "negative damping": (lambda tmp: ["run", "--model", tmp / "missing.safetensors", "--damping", "-1"], "--damping"),
    "unknown backend": (lambda tmp: ["bench", "--backends", "gpu"], "gpu"),
    "missing model file": (lambda tmp: ["fold-in", "--model", tmp / "missing.safetensors", "--ratings",
                                        tmp / "malformed.csv"], "missing.safetensors"),
    "malformed model file": (lambda tmp: ["tune", "--model", tmp / "not_a_model.safetensors"], "not_a_model"),
    "unwritable output (OSError)": (lambda tmp: ["pretrain", "--users", 40, "--iterations", 1, "--quiet", "--out",
                                                 tmp / "malformed.csv" / "model.safetensors"], "malformed.csv"),
    "no command": (lambda tmp: [], "COMMAND"),
}
# These also run as real processes (each one pays for importing torch, so only a few).
IN_SUBPROCESS = ("missing data file", "unknown option")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "malformed.csv").write_text("userId,movieId,rating\n1,2,4.0\n1,three,5.0\n")
    (tmp / "not_a_model.safetensors").write_text("hello")
    return tmp


@pytest.fixture
def restore_logger():
    """main() configures the ``retrain`` logger; put it back for the tests that run after."""
    logger = logging.getLogger("retrain")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def check_one_line_error(code, stdout, stderr, names: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and names in lines[0], stderr
    assert "Traceback" not in stderr and stdout == ""


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_returns_2_with_one_line_on_stderr(case, bad_files, capsys, restore_logger):
    args, names = BAD_INPUTS[case]
    code = in_process(capsys, *args(bad_files))
    out, err = capsys.readouterr()
    check_one_line_error(code, out, err, names)


def test_bad_inputs_exit_2_in_a_real_process(bad_files):
    procs = {case: subprocess.Popen(command(*BAD_INPUTS[case][0](bad_files)), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for case in IN_SUBPROCESS}
    for case, proc in procs.items():  # started side by side: they spend their time importing torch
        stdout, stderr = proc.communicate(timeout=600)
        check_one_line_error(proc.returncode, stdout, stderr, BAD_INPUTS[case][1])


def test_verbose_shows_the_traceback_of_an_input_error_and_still_exits_2(capsys, restore_logger):
    code = in_process(capsys, "demo", "--users", 40, "--test", "1.2", "--verbose")
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" in err and "retrain.errors.InputError" in err
    assert err.strip().splitlines()[-1].startswith("retrain demo: error: test must be")


def _raise(exc):
    def raiser(*args, **kwargs):
        raise exc
    return raiser


def test_a_bug_prints_its_traceback_and_exits_1(tmp_path, capsys, monkeypatch, restore_logger):
    # A RuntimeError deep inside the library (the split the command makes) is a bug, not an input error.
    monkeypatch.setattr(Ratings, "split_per_user", _raise(RuntimeError("planted bug")))
    code = in_process(capsys, "pretrain", "--users", 40, "--out", tmp_path / "model.safetensors")
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and "RuntimeError: planted bug" in err and "split_per_user" in err


def test_a_plain_value_error_is_a_bug_too(tmp_path, capsys, monkeypatch, restore_logger):
    # Only InputError means "your mistake": a ValueError from a bug must not be hidden as one.
    monkeypatch.setattr(Ratings, "split_per_user", _raise(ValueError("planted bug")))
    code = in_process(capsys, "pretrain", "--users", 40, "--out", tmp_path / "model.safetensors")
    assert code == 1 and "Traceback" in capsys.readouterr().err


def test_a_job_larger_than_the_memory_is_one_error_line_and_exit_2(tmp_path, capsys, monkeypatch, restore_logger):
    # The backends' MemoryError names the buffer, its size and the remedy: not a bug's traceback.
    monkeypatch.setattr(Ratings, "split_per_user", _raise(MemoryError("the probe state, float32 [8, 2, 4] ...")))
    code = in_process(capsys, "pretrain", "--users", 40, "--out", tmp_path / "model.safetensors")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "retrain pretrain: error: the probe state, float32 [8, 2, 4] ..."


def test_an_interrupt_exits_130(tmp_path, capsys, monkeypatch, restore_logger):
    monkeypatch.setattr(Ratings, "split_per_user", _raise(KeyboardInterrupt()))
    code = in_process(capsys, "pretrain", "--users", 40, "--out", tmp_path / "model.safetensors")
    assert code == 130 and capsys.readouterr().err.strip() == "retrain pretrain: interrupted"


def test_recommendations_quote_string_ids_that_hold_commas_quotes_or_line_breaks(tmp_path):
    # They used to be written bare: "smith, j" became two fields and shifted every column after it.
    import csv
    import io
    import math

    import torch

    from retrain.artifacts import recommendations_bytes

    users, items = np.array(["smith, j", 'say "hi"']), np.array(["a\nb", "plain", "c,d"])
    text = recommendations_bytes(torch.tensor([[2, 1], [0, 2]]), torch.tensor([[2.5, 1.0], [3.0, 0.5]]), users,
                                 items).decode()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows == [["user_id", "rank", "item_id", "score"], ["smith, j", "1", "c,d", "2.5"],
                    ["smith, j", "2", "plain", "1"], ['say "hi"', "1", "a\nb", "3"], ['say "hi"', "2", "c,d", "0.5"]]
    plain = recommendations_bytes(torch.tensor([[1]]), torch.tensor([[4.25]]), np.array([7]), np.array([10, 11]))
    assert plain == b"user_id,rank,item_id,score\n7,1,11,4.25\n"  # plain ids: as before
    # A score that overflowed to +inf is the best item, kept; -inf (padding) and NaN are left out.
    extremes = recommendations_bytes(torch.tensor([[0, 1, 2]]), torch.tensor([[math.inf, -math.inf, math.nan]]),
                                     np.array([7]), np.array([10, 11, 12]))
    assert extremes == b"user_id,rank,item_id,score\n7,1,10,inf\n"
