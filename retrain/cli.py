"""The command line: ``python -m retrain demo | pretrain | tune | run | fold-in | bench``.

It parses the options and calls the library (``retrain.protocol``, ``retrain.artifacts``,
``retrain.demo``, ``retrain.bench``).  Results go to stdout; progress bars and log lines go to
stderr.  Exit status: 0 when done; 2 for a mistake in the input (``retrain.InputError``), a file
that cannot be read or written (``OSError``) or a job larger than the memory (``MemoryError``: the
backends name the buffer, its size and what to do), reported as one line ``retrain <command>:
error: ...``; 1 for any other exception (a bug in retrain), with its traceback; 130 when
interrupted.
``--verbose`` prints the traceback of every error.

Under torchrun (``torchrun --nproc-per-node N -m retrain run ...``) every rank runs the command:
``run`` initialises the process group (gloo for the cpu backend, NCCL for triton) and shards the
pipeline over the ranks (docs/scaling.md); every rank loads the data, rank 0 alone prints, logs
and writes the output (or each rank its shard of it).  The other commands do not shard: under
torchrun with more than one rank they refuse to start.

``pretrain``, ``tune`` and ``run`` given the same data, ``--seed``, ``--new-users``, ``--val`` and
``--test`` work on the same parts of ``retrain.protocol_split``: the base model never sees the
ratings that ``tune`` and ``run`` validate on.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
import traceback

from . import distributed
from .artifacts import embeddings_bytes, read_hyp, recommendations_bytes
from .backends import BACKENDS, get_backend
from .bench import run_bench
from .bundle import Recipe, ServedModel
from .bundle import load as load_bundle
from .data import Ratings
from .demo import (DEFAULT_MAX_EVALS, DEFAULT_MODEL, DEMO_USERS, describe, load_ratings, run_demo, run_pipeline,
                   run_tune)
from .errors import InputError, blame
from .files import atomic_write_files, check_writable
from .heads import Model
from .hyperparams import DEFAULT_DAMPING, MAX_SEED, HyperParams, model_family
from .ids import shown_ids
from .movielens import load_movielens
from .plots import plot_tuning_landscape
from .pretrain import pretrain
from .progress import MeteredBackend, configure_logging, progress_enabled
from .protocol import ProtocolSplit, protocol_split
from .report import model_rmse
from .serving import diverged_message, recommend
from .tuner import DEFAULT_BOUNDS

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- shared steps
def _data(args) -> tuple[Ratings, str, ProtocolSplit]:
    """The ``--data`` file (or ``--users`` synthetic users), its description, and its split."""
    data, source = load_ratings(args.data, n_users=args.users, seed=args.seed)
    return data, source, protocol_split(data, args.new_users, args.val, args.test, seed=args.seed)


def _known_parts(args, model: Model) -> ProtocolSplit:
    """The split of ``--data`` that ``pretrain`` made, on the model's items."""
    data, source, split = _data(args)
    log.info("data: %s (%s); known users: %d pretraining / %d validation ratings", source, describe(data),
             split.pretrain.nnz, split.val.nnz)
    with blame("--data"):
        return split.with_items(model.head.item_ids)


_INPUTS = ("--data", "--model", "--ratings", "--hyp")


def _check_outputs(args, *options: str) -> None:
    """InputError unless the files these options name (those given) can be written, and none of
    them is an input file or another output: before any work, so that none is lost to an output
    path that fails at the end, and no input is overwritten (``fold-in --out`` naming the model)."""
    given = lambda option: getattr(args, option[2:].replace("-", "_"), None)
    taken = {os.path.realpath(given(option)): option for option in _INPUTS if given(option) is not None}
    for option in options:
        path = given(option)
        if path is None:
            continue
        check_writable(path, option)
        clash = taken.get(os.path.realpath(path))
        if clash is not None:
            raise InputError(f"{option} {path} is the file of {clash} too: writing it would destroy that; name "
                             "another file")
        taken[os.path.realpath(path)] = option


def _metered(args) -> MeteredBackend:
    """The ``--backend``, metered, with progress bars when they can be seen."""
    return MeteredBackend(get_backend(args.backend), progress=progress_enabled(args.quiet))


# --------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    backend = get_backend(args.backend)  # an unavailable backend fails before the data is loaded
    data, source = load_ratings(args.data, n_users=args.users, seed=args.seed)
    result = run_demo(data, source, model=args.model, backend=backend, progress=progress_enabled(args.quiet),
                      seed=args.seed, out=args.out, max_evals=args.max_evals, n_starts=args.n_starts,
                      max_time=args.max_time, new_users=args.new_users, val=args.val, test=args.test,
                      damping=args.damping)
    print(result.text)
    return 0


def cmd_pretrain(args) -> int:
    _check_outputs(args, "--out")  # before the data is loaded and the pretraining runs
    data, source, split = _data(args)
    ratings = data if args.all_ratings else split.pretrain
    log.info("pretraining %s on %s (%s)", args.model, "all ratings" if args.all_ratings else "the pretraining part",
             describe(ratings))
    t = time.perf_counter()
    model = pretrain(ratings, args.model, seed=args.seed, reg=args.reg, iterations=args.iterations)
    seconds = time.perf_counter() - t
    model.save(args.out)
    print(f"pretrained {args.model} on {source}: {describe(ratings)} in {seconds:.1f} s")
    print(f"  training RMSE {model_rmse(model.head, model.user_embeddings, ratings):.4f}")
    if not args.all_ratings:
        print(f"  validation RMSE {model_rmse(model.head, model.user_embeddings, split.val):.4f} (ratings it never saw)")
    print(f"wrote {args.out}")
    return 0


def cmd_tune(args) -> int:
    _check_outputs(args, "--journal", "--plot")
    model = Model.load(args.model)
    split = _known_parts(args, model)
    result = run_tune(model.head, split, _metered(args), seed=args.seed, max_evals=args.max_evals,
                      n_starts=args.n_starts, max_time=args.max_time, algorithm=args.algorithm, journal=args.journal,
                      damping=args.damping)
    print(f"tuned on {result.hyp.num_users} of {split.pretrain.n_users} users: lr {result.lr:.4g} "
          f"(a = {result.a:.3f}), reg {result.reg:.4g} (b = {result.b:.3f}), validation loss {result.val_loss:.4f}, "
          f"best epoch {result.epochs}")
    print(f"  {result.n_evals} evaluations in {result.n_batches} probe batches; journal {args.journal}")
    if args.plot:
        plot_tuning_landscape(args.plot, result.history, DEFAULT_BOUNDS, best=(result.a, result.b))
        print(f"wrote {args.plot}")
    return 0


def cmd_run(args) -> int:
    _check_outputs(args, "--out", "--journal")  # before the data is loaded and the tuning starts
    model = Model.load(args.model)
    split = _known_parts(args, model)
    inner = get_backend(args.backend)
    sharded = distributed.sharded_backend(inner)  # under torchrun: the group main() initialised
    backend = MeteredBackend(sharded or inner, progress=progress_enabled(args.quiet))
    result = run_pipeline(model, split, backend, seed=args.seed, max_evals=args.max_evals,
                          n_starts=args.n_starts, max_time=args.max_time, path=args.out, journal=args.journal,
                          refit=not args.no_refit, damping=args.damping)
    if sharded is not None and sharded.rank > 0:
        return 0  # rank 0 reports
    print(f"retrained {split.pretrain.n_users} users: lr {result.hyp.learning_rate:.4g}, "
          f"reg {result.hyp.regularization:.4g}, damping {result.hyp.damping:g}, {result.epochs} epochs, "
          f"validation loss {result.val_loss:.4f}"
          + ("; refitted on training + validation ratings" if result.refit else "")
          + ("" if sharded is None else f"; sharded over {sharded.world_size} ranks"))
    if split.test.nnz and result.shard is None:
        print(f"  test RMSE {model_rmse(result.model.head, result.model.user_embeddings, split.test):.4f}")
    print(f"  tuning: {result.tune.n_evals} evaluations in {result.tune.n_batches} probe batches")
    if result.shard is None:
        print(f"wrote {args.out} (model, ids and recipe in one file)")
    else:  # too large to gather: no test RMSE either (retrain.load the index to score it)
        print(f"wrote {args.out} (the index) and its {result.shard.world_size} shard files beside it")
    return 0


def _served(args) -> ServedModel:
    """The ``--model`` bundle with its recipe (or an old model's ``--hyp`` file, or the options
    alone); ``--lr`` / ``--reg`` / ``--epochs`` / ``--num-users`` / ``--damping`` / ``--seed``
    override it."""
    if args.hyp:
        hyp, epochs = read_hyp(args.hyp)
        served = ServedModel(Model.load(args.model), Recipe(hyp, epochs))
    else:
        try:
            served = load_bundle(args.model)
        except InputError as exc:
            if "holds no recipe" not in str(exc) or None in (args.lr, args.reg, args.epochs, args.num_users):
                raise
            model = Model.load(args.model)  # a model without a recipe: the options are the recipe
            served = ServedModel(model, Recipe(HyperParams(model=model.head.name, num_users=1), 0))
    recipe = served.recipe
    changes = {name: value for name, value in (("learning_rate", args.lr), ("regularization", args.reg),
                                               ("num_users", args.num_users), ("damping", args.damping),
                                               ("seed", args.seed))
               if value is not None}
    served.recipe = dataclasses.replace(recipe, hyp=recipe.hyp.replace(**changes),
                                        epochs=recipe.epochs if args.epochs is None else args.epochs)
    return served


def cmd_fold_in(args) -> int:
    _check_outputs(args, "--out", "--recommendations")
    served = _served(args)
    hyp, epochs = served.recipe.hyp, served.recipe.epochs
    new_users = load_movielens(args.ratings)
    backend = _metered(args)
    with backend.stage("fold-in", max_epochs=epochs), blame(args.ratings):
        result = served.fold_in(new_users, backend=backend)
    if result.n_dropped:
        print(f"dropped {result.n_dropped} ratings on items the model does not know")
    if result.no_known_items.any():
        empty = result.user_ids[result.no_known_items]
        print(f"{len(empty)} of {len(result.user_ids)} users (user ids {shown_ids(empty)}) have no rating on an item "
              "the model knows: they get the initial embedding")
    if result.diverged.any():
        raise InputError(diverged_message(result.user_ids[result.diverged], len(result.user_ids), hyp)
                         + "; wrote nothing")
    files = [(args.out, embeddings_bytes(result.embeddings, result.user_ids, model=served.head.name, epochs=epochs))]
    if args.recommendations:
        k = min(args.k, served.head.n_items)
        items, scores = recommend(served.head, result.embeddings, k, exclude_seen=result.ratings, backend=backend)
        files.append((args.recommendations, recommendations_bytes(items, scores, result.user_ids, served.head.item_ids)))
    atomic_write_files(files)  # both or neither: a full disk leaves no embeddings without their lists
    n = len(result.user_ids)
    print(f"folded in {n} user{'s' * (n != 1)} ({result.ratings.nnz} ratings): lr {hyp.learning_rate:.4g}, "
          f"reg {hyp.regularization:.4g}, damping {hyp.damping:g}, {epochs} epochs; wrote {args.out} (embeddings "
          f"[{result.embeddings.shape[0]}, {result.embeddings.shape[1]}], user_ids)")
    if args.recommendations:
        print(f"wrote the top {k} unseen items per user to {args.recommendations}")
    return 0


def cmd_bench(args) -> int:
    print(run_bench(model=args.model, users=args.users, seed=args.seed, probes=args.probes, epochs=args.epochs,
                    backends=args.backends.split(",") if args.backends else None,
                    baseline_steps=args.baseline_steps, baselines=not args.no_baselines))
    return 0


# --------------------------------------------------------------------------- the parser
SEED_HELP = "seeds the data split, the init and the schedule (default 0)"


def _common(parser, *, data=True, backend=True, seed_help=SEED_HELP, seed_default=0) -> None:
    group = parser.add_argument_group("common options")
    if data:
        group.add_argument("--data", metavar="PATH", help="MovieLens ratings file (u.data, ratings.dat, ratings.csv); "
                                                          "default: built-in synthetic ratings")
        group.add_argument("--users", type=_positive_int, default=DEMO_USERS, metavar="N",
                           help=f"users of the synthetic data (default {DEMO_USERS})")
        for option, what in (("--new-users", "users held out as new users"),
                             ("--val", "each known user's ratings for validation"),
                             ("--test", "each user's ratings for testing")):
            group.add_argument(option, type=float, default=0.2, metavar="F", help=f"fraction of {what} (default 0.2)")
    if backend:
        group.add_argument("--backend", default="auto", choices=BACKENDS,
                           help="probe-training backend (default auto: triton on a CUDA GPU, else cpu, else reference)")
    group.add_argument("--seed", type=_seed, default=seed_default, help=seed_help)
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    group.add_argument("--verbose", "-v", action="store_true", help="debug log lines; the traceback of any error")


def _tuning(parser, *, retrains: bool = True) -> None:
    """The tuning options; ``retrains``: the command also retrains every user, and ``--max-time``
    bounds that retrain too (``retrain_user_embeddings``' ``final_max_time`` defaults to it)."""
    group = parser.add_argument_group("tuning")
    group.add_argument("--max-evals", type=_positive_int, default=DEFAULT_MAX_EVALS, metavar="N",
                       help=f"points the tuner evaluates (default {DEFAULT_MAX_EVALS})")
    group.add_argument("--n-starts", type=_positive_int, default=8, metavar="K",
                       help="the most NLopt local searches live at once after the wide first batch (default 8)")
    group.add_argument("--max-time", type=_positive_float, default=3600.0, metavar="S",
                       help="tuning time budget in seconds" + (
                           ", and again the final retrain's, which then keeps its best checkpoint so far"
                           if retrains else "") + " (default 3600)")
    group.add_argument("--damping", type=_non_negative_float, default=DEFAULT_DAMPING, metavar="D",
                       help="count-independent L2 on the user embeddings, in ratings: a user with n ratings is "
                            f"shrunk as if by D/n more reg; fixed, not tuned (default {DEFAULT_DAMPING:g})")


def _at_least(convert, minimum, *, strict: bool = False, maximum=None):
    """An argparse type: ``convert(text)`` (``int`` or ``float``), finite and ``>= minimum``
    (``>`` when ``strict``) and ``<= maximum`` when given; anything else (``16.0`` for an int,
    ``nan``, ``-1``) is one error line."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > minimum if strict else value >= minimum)
                and (maximum is None or value <= maximum)):
            kind = "an integer" if convert is int else "a finite number"
            bound = f" and <= {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"expected {kind} {'>' if strict else '>='} {minimum}{bound}, got {text!r}")
        return value
    return parse


_positive_int = _at_least(int, 1)
_seed = _at_least(int, 0, maximum=MAX_SEED)  # HyperParams' range: checked before the data is loaded
_positive_float, _non_negative_float = _at_least(float, 0, strict=True), _at_least(float, 0)


def _model_name(text: str) -> str:
    """An argparse type: a model name that ``pretrain`` knows."""
    try:
        model_family(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``prog: error: message (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m retrain",
                     description="Retrain user embeddings against a frozen item side, tuning (lr, reg) with NLopt "
                                 "and many concurrent probes.  Start with 'demo'.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = f"user_item_biases, matrix_factorization_K or mlp_DxH (default {DEFAULT_MODEL})"

    p = sub.add_parser("demo", help="the whole job on synthetic data (or --data), with a report",
                       description="Hold out new users; split every other user's ratings into pretraining / "
                                   "validation / test parts; pretrain a base model on the pretraining part; tune and "
                                   "retrain the user embeddings; fold in the new users; print the RMSE table.  Writes "
                                   "report.md, the model (one file with its recipe), the journal and two plots to --out.")
    _common(p)
    _tuning(p)
    p.add_argument("--model", type=_model_name, default=DEFAULT_MODEL, help=model_help)
    p.add_argument("--out", metavar="DIR", help="artifact folder (default runs/<timestamp>)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="fit a base model (every parameter) and write it",
                       description="Fit a base model on the pretraining part of the data (or on --all-ratings), "
                                   "write it as safetensors and print its training and validation RMSE.")
    _common(p, backend=False)
    p.add_argument("--model", type=_model_name, default=DEFAULT_MODEL, help=model_help)
    p.add_argument("--out", default="model.safetensors", metavar="FILE", help="model file (default model.safetensors)")
    p.add_argument("--all-ratings", action="store_true",
                   help="pretrain on every rating (then the item side has seen what tune/run validate on)")
    p.add_argument("--reg", type=_non_negative_float, help="ridge penalty (ALS) or weight decay (MLP)")
    p.add_argument("--iterations", type=_positive_int, help="ALS sweeps or Adam epochs")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("tune", help="tune (lr, reg) for a model's frozen head, with a resumable journal",
                       description="Tune lr = 1e-3*10^a and reg = 1e-5*10^b on the pipeline's subsample of the known "
                                   "users: train on the pretraining part, early-stop and score on the validation "
                                   "part.  A rerun with the same --journal resumes without retraining.")
    _common(p)
    _tuning(p, retrains=False)
    p.add_argument("--model", required=True, metavar="FILE", help="model file written by 'pretrain'")
    p.add_argument("--journal", default="journal.jsonl", metavar="FILE", help="JSONL journal (default journal.jsonl)")
    p.add_argument("--algorithm", default="LN_BOBYQA", help="NLopt algorithm (default LN_BOBYQA)")
    p.add_argument("--plot", metavar="PNG", help="also write the tuning landscape plot")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("run", help="the pipeline: tune, retrain every known user, write the retrained model",
                       description="Tune, retrain all known users with the tuned values (keeping the best epoch), "
                                   "refit every known user on its training + validation ratings with the tuned recipe, write "
                                   "one model file holding the head, the users, the ids and the recipe (what 'fold-in' "
                                   "needs), print the test RMSE.")
    _common(p)
    _tuning(p)
    p.add_argument("--model", required=True, metavar="FILE", help="base model file written by 'pretrain'")
    p.add_argument("--out", default="retrained.safetensors", metavar="FILE",
                   help="retrained model file (default retrained.safetensors)")
    p.add_argument("--journal", metavar="FILE", help="tuning journal to append to and resume from")
    p.add_argument("--no-refit", action="store_true",
                   help="keep the early-stopped rows (trained on the pretraining part only) instead of the refit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("fold-in", help="embeddings of new users, trained with the retrain's recipe",
                       description="Train each user of --ratings with the retrain's hyper-parameters and epoch count "
                                   "(the recipe inside --model; an older model's --hyp FILE or <model>.hyp.json; or "
                                   "--lr/--reg/--epochs/--num-users, which override it, as --damping and --seed do).  "
                                   "Ratings on unknown items are dropped.  Writes 'embeddings' [n, d] and 'user_ids' [n] "
                                   "as safetensors, and the top-k as CSV.")
    _common(p, data=False, seed_default=None,
            seed_help="override the recipe's seed, which keys the init and the schedule (default: the recipe's; 0 "
                      "for a model without one)")
    p.add_argument("--model", required=True, metavar="FILE", help="retrained model file written by 'run' or 'demo'")
    p.add_argument("--ratings", required=True, metavar="FILE", help="the new users' ratings, MovieLens format")
    p.add_argument("--hyp", metavar="JSON", help="hyper-parameter file of an older model (default: the recipe "
                                                 "inside --model, else <model>.hyp.json)")
    p.add_argument("--epochs", type=_positive_int, help="override the epoch count")
    p.add_argument("--lr", type=_positive_float, help="override the learning rate")
    p.add_argument("--reg", type=_non_negative_float, help="override the L2 regularisation")
    p.add_argument("--num-users", type=_positive_int, help="override the retrain's user count (sets the Glorot bound)")
    p.add_argument("--damping", type=_non_negative_float, help="override the recipe's damping (D/n more reg for a "
                                                               "user with n ratings)")
    p.add_argument("--out", default="embeddings.safetensors", metavar="FILE",
                   help="embeddings file (default embeddings.safetensors)")
    p.add_argument("--recommendations", metavar="CSV", help="also write the top --k unseen items per user")
    p.add_argument("--k", type=_positive_int, default=10, help="items per user for --recommendations (default 10)")
    p.set_defaults(func=cmd_fold_in)

    p = sub.add_parser("bench", help="throughput of the available backends against the PyTorch loops",
                       description="Time each backend on synthetic data (P probes, after a warm-up epoch) and the "
                                   "eager and batched PyTorch loops on their first steps; print rating·probe·epochs "
                                   "per second and the speed-up over the eager loop.")
    _common(p, data=False, backend=False,
            seed_help="seeds the synthetic data, the head's fit, the init and the schedule (default 0)")
    p.add_argument("--users", type=_positive_int, default=2000, metavar="N", help="synthetic users (default 2000)")
    p.add_argument("--model", type=_model_name, default=DEFAULT_MODEL, help=model_help + "; fitted by one ALS sweep")
    p.add_argument("--probes", type=_positive_int, default=8, metavar="P", help="probes trained at once (default 8)")
    p.add_argument("--epochs", type=_positive_int, default=4, help="timed epochs (default 4)")
    p.add_argument("--backends", metavar="LIST",
                   help="comma-separated backends (default: the available ones but reference and Triton's interpreter)")
    p.add_argument("--baseline-steps", type=_positive_int, default=200, metavar="N",
                   help="optimizer steps per probe timed for the PyTorch loops (default 200)")
    p.add_argument("--no-baselines", action="store_true", help="skip the PyTorch loops")
    p.set_defaults(func=cmd_bench)
    return parser


def _start_ranks(args) -> bool:
    """Under torchrun: initialise the process group for ``run`` (gloo, or NCCL for the triton
    backend); True when this call did.  InputError for a command that does not shard."""
    if not distributed.launched_by_torchrun():
        return False
    if args.command != "run":
        if int(os.environ["WORLD_SIZE"]) > 1:
            raise InputError(f"only 'run' shards over ranks: run '{args.command}' in one process, not under torchrun")
        return False
    return distributed.init_distributed({"triton": "nccl", "auto": None}.get(args.backend, "gloo"))


def main(argv=None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)  # argparse prints one error line and exits 2 on a bad option
    name = args.command
    if distributed.launched_by_torchrun():
        name = f"{args.command} (rank {os.environ['RANK']})"
        args.quiet = args.quiet or os.environ["RANK"] != "0"  # rank 0 logs and draws the bars
    configure_logging(quiet=args.quiet, verbose=args.verbose)
    started = False
    try:
        started = _start_ranks(args)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"retrain {name}: interrupted", file=sys.stderr)
        return 130
    except (InputError, OSError, MemoryError) as exc:  # OSError: unreadable input, unwritable output
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the message
        print(f"retrain {name}: error: {message}", file=sys.stderr)
        return 2
    except Exception:  # a bug in retrain, not a mistake in the input: keep the traceback
        traceback.print_exc()
        print(f"retrain {name}: internal error (the traceback above says where)", file=sys.stderr)
        return 1
    finally:
        if started:
            distributed.leave()
