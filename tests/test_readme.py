"""The examples of README.md, docs/*.md and ``retrain``'s docstring run as printed."""
import re
import textwrap
from pathlib import Path

import pytest

import retrain
from retrain.trainer import train_probes

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_python_example_runs(capsys):
    blocks = python_blocks(README)
    assert blocks, "README.md has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(blocks)  # each example prints one line of results
    lr, reg, *_ = lines[0].split()
    assert float(lr) > 0 and float(reg) >= 0


def _small_problem() -> dict:
    """The names the docs' fragments leave to the reader, on a small problem."""
    data = retrain.synthetic_ratings(n_users=300, n_items=100, seed=0)
    split = retrain.protocol_split(data, new_users=0.2, val=0.2, test=0.2, seed=0)
    model = retrain.pretrain(split.pretrain, "matrix_factorization_4")
    hyp = retrain.HyperParams(model="matrix_factorization_4", max_epochs=8)
    return dict(retrain=retrain, data=data, model=model, head=model.head, train=split.pretrain, val=split.val,
                hyp=hyp, lrs=[1e-2, 3e-2], regs=[1e-4, 1e-3], more_lrs=[1e-1], more_regs=[1e-3])


def test_docs_python_fragments_run():
    blocks = [(path, block) for path in DOCS for block in python_blocks(path)]
    assert len(blocks) >= 2, "docs/pipeline.md's protocol_split and prepare/run_probes examples"
    problem = _small_problem()
    for path, block in blocks:
        names = dict(problem)
        exec(compile(block, str(path), "exec"), names)
        if "second" in names:  # the prepare / run_probes example: batches on one problem are fresh runs
            again = train_probes(problem["head"], problem["train"], problem["val"], problem["more_lrs"],
                                 problem["more_regs"], problem["hyp"])
            assert names["second"][0].history == again[0].history
        if "split" in names:
            assert names["split"].pretrain.n_users == problem["train"].n_users


def test_package_docstring_example_runs(tmp_path, monkeypatch):
    example = retrain.__doc__.split("\n\n")[1]  # the indented example after the summary line
    pd = pytest.importorskip("pandas")
    new = retrain.synthetic_ratings(n_users=2, n_items=50, seed=1)  # two new users, on the model's items
    frame = pd.DataFrame({"userId": new.user_ids[new.user_of_row()] + 10_000, "movieId": new.item_ids[new.items],
                          "rating": new.ratings})
    monkeypatch.chdir(tmp_path)  # it writes model.safetensors
    names = dict(lrs=[1e-2, 3e-2], regs=[1e-4, 1e-3], new_ratings_frame=frame, user_id=10_000)
    exec(compile(textwrap.dedent(example), "retrain/__init__.py", "exec"), names)
    assert (tmp_path / "model.safetensors").is_file() and len(names["probes"]) == 2
    assert 10_000 in names["served"].model.user_ids.tolist()
