"""retrain without nlopt, tqdm and matplotlib: the library and the bench run, the rest says what is missing.

The check runs in a fresh interpreter in which a ``sys.meta_path`` finder makes importing those
packages fail, as if they were not installed.
"""
import os
import subprocess
import sys
import textwrap

BLOCKED = ("nlopt", "tqdm", "matplotlib")

SCRIPT = textwrap.dedent('''
    import importlib.abc
    import importlib.machinery
    import logging
    import sys

    BLOCKED = set({blocked!r})


    class NotInstalled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        """Importing a blocked package raises ImportError.  Its spec has no origin, which is how
        torch's optional-package probes (importlib.util.find_spec) see a package without files."""

        def find_spec(self, name, path=None, target=None):
            return importlib.machinery.ModuleSpec(name, self) if name.split(".")[0] in BLOCKED else None

        def create_module(self, spec):
            raise ModuleNotFoundError(f"No module named {{spec.name!r}} (blocked by the test)", name=spec.name)

        def exec_module(self, module):
            raise AssertionError("never reached: create_module raises")


    sys.meta_path.insert(0, NotInstalled())

    import retrain
    from retrain.progress import MeteredBackend, configure_logging, progress_enabled

    data = retrain.synthetic_ratings(n_users=40, n_items=30, mean_ratings_per_user=8, seed=0)
    split = retrain.protocol_split(data, new_users=0, seed=0)
    model = retrain.pretrain(split.pretrain, "matrix_factorization_4", iterations=2)
    hyp = retrain.HyperParams(model="matrix_factorization_4", max_epochs=4, epochs_per_checkpoint=2)
    probes = retrain.train_probes(model.head, split.pretrain, split.val, [0.01, 0.1], [1e-4, 1e-3], hyp)
    print("probes", len(probes), all(p.epochs_trained > 0 for p in probes))

    for name, call in (("tune", lambda: retrain.tune(model.head, split.pretrain, split.val, hyp, max_evals=2)),
                       ("plot", lambda: __import__("retrain.plots").plots.plot_validation_curve("x.png", [(0, 1.0)]))):
        try:
            call()
            print(name, "ran")
        except retrain.InputError as exc:
            print(name, "InputError:", exc)

    # Without tqdm: no bars even when asked for, and log lines still reach stderr.
    configure_logging()
    logging.getLogger("retrain.test").info("a plain log line")
    backend = MeteredBackend(retrain.get_backend("reference"), progress=True)
    with backend.stage("probes", max_epochs=4, max_evals=2):
        retrain.train_probes(model.head, split.pretrain, split.val, [0.01], [1e-4], hyp, backend=backend)
    print("metered", len(backend.calls) > 0, progress_enabled(quiet=False))

    from retrain.cli import main
    status = main(["bench", "--users", "40", "--model", "matrix_factorization_4", "--probes", "2", "--epochs", "1",
                   "--baseline-steps", "2"])
    print("bench status", status)
    print("imported", sorted(BLOCKED & {{name.split(".")[0] for name in sys.modules}}))
''').format(blocked=BLOCKED)


def test_retrain_runs_without_nlopt_tqdm_and_matplotlib(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "probes 2 True" in out
    assert any(line.startswith("tune InputError:") and "nlopt" in line for line in out), proc.stdout
    assert any(line.startswith("plot InputError:") and "matplotlib" in line for line in out), proc.stdout
    assert "metered True False" in out
    assert "a plain log line" in proc.stderr.splitlines()
    assert "bench status 0" in out and any("| backend " in line or "eager PyTorch loop" in line for line in out)
    assert "imported []" in out
