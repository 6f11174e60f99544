"""Heads and models: checks, predictions, and the safetensors file format."""
import dataclasses
import os

import numpy as np
import pytest
import torch

from problems import random_head
from retrain.heads import Head, HeadLike, Layer, Model, load_head
from safetensors import safe_open
from safetensors.torch import save_file


def test_dimension_mismatch_is_named():
    with pytest.raises(ValueError, match="tower outputs 4 values but item_vectors have h=3"):
        Head(torch.zeros(5, 3), torch.zeros(5), 0.0, [Layer(torch.zeros(4, 2), torch.zeros(4), "relu")])
    with pytest.raises(ValueError, match="item_bias must be"):
        Head(torch.zeros(5, 3), torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match="activation"):
        Head(torch.zeros(5, 3), torch.zeros(5), 0.0, [Layer(torch.zeros(3, 2), torch.zeros(3), "gelu")])
    with pytest.raises(ValueError, match=r"user_embeddings must be \[n_users, d=3\]"):
        Model(Head(torch.zeros(5, 3), torch.zeros(5), 0.0), torch.zeros(2, 4), [0, 1])
    with pytest.raises(ValueError, match="finite"):
        Head(torch.full((5, 3), float("nan")), torch.zeros(5), 0.0)


@pytest.mark.parametrize("users,items,message", [
    ([-1], [0], r"users index -1 \(entry 0\) is not in \[0, 3\)"),  # counted from the end, silently
    ([0, 3], [0, 0], r"users index 3 \(entry 1\) is not in \[0, 3\)"),  # IndexError
    ([0], [-5], r"items index -5 \(entry 0\) is not in \[0, 5\)"),
    ([0.7], [0], r"users must be a 1-d array of integer indices, got float64 \[1\]"),  # truncated to 0
    ([True], [0], r"users must be a 1-d array of integer indices, got bool \[1\]"),  # index 1
])
def test_predict_indices_takes_indices_in_range_only(users, items, message):
    model = Model(random_head("mf", 5, 2), torch.arange(6.0).reshape(3, 2), [10, 11, 12])
    with pytest.raises(ValueError, match=message):
        model.predict_indices(users, items)
    assert torch.equal(model.predict_indices([2], [4]), model.head.predict(model.user_embeddings[[2]], torch.tensor([4])))


@pytest.mark.parametrize("bias", ["3", torch.tensor([1.0, 2.0])])
def test_a_global_bias_must_be_one_number(bias):
    with pytest.raises(ValueError, match="global_bias must be one number"):  # "3" read as 3.0; two: a ValueError
        Head(torch.zeros(5, 3), torch.zeros(5), bias)


@pytest.mark.parametrize("kind", ["biases", "mf", "tower1", "tower2"])
def test_save_load_roundtrip(tmp_path, kind):
    head = random_head(kind, 17, d=5, h=3)
    model = Model(head, torch.randn(6, head.d), np.arange(6) * 3)
    path = tmp_path / "sub" / "model.safetensors"
    model.save(path)
    back = Model.load(path)
    assert torch.equal(back.user_embeddings, model.user_embeddings)
    assert back.head.name == head.name and back.head.init == head.init
    users, items = np.array([0, 5, 2]), np.array([16, 0, 3])
    assert torch.equal(back.predict_indices(users, items), model.predict_indices(users, items))
    assert load_head(path).n_items == 17
    model.save(path.parent / "again.safetensors")  # the same model gives the same bytes
    assert (path.parent / "again.safetensors").read_bytes() == path.read_bytes()
    assert [f for f in os.listdir(path.parent) if f.startswith(".tmp")] == []


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        Model.load(path)
    with pytest.raises(ValueError, match="not found"):
        Model.load(tmp_path / "missing.safetensors")


def test_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    model = Model(random_head("mf", 4, d=2), torch.ones(2, 2), [0, 1])
    model.save(path)
    before = path.read_bytes()

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        Model(model.head, torch.zeros(2, 2), [0, 1]).save(path)
    assert path.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_linear_form_matches_predict():
    tower2 = random_head("tower2", 9, d=4, h=3)
    first, second = tower2.tower
    head = dataclasses.replace(tower2, tower=[Layer(first.weight, first.bias, "identity"), second])
    A, c = head.linear_form()
    e = torch.randn(9, 4)
    items = torch.arange(9)
    assert torch.allclose((A[items] * e.double()).sum(1) + c, head.predict(e, items).double(), atol=1e-5)


def test_an_unknown_activation_raises_at_construction_and_heads_are_frozen():
    with pytest.raises(ValueError, match="activation must be one of"):
        Layer(torch.zeros(3, 2), torch.zeros(3), "gelu")
    head = random_head("tower1", 5, d=2, h=3)
    for name, value in (("global_bias", 1.0), ("tower", ()), ("item_vectors", torch.zeros(5, 3))):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(head, name, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        head.tower[0].activation = "identity"
    assert isinstance(head, HeadLike)


@pytest.mark.parametrize("kind", ["biases", "mf", "tower1", "tower2"])
def test_scores_are_the_predictions_of_every_pair(kind):
    head = random_head(kind, 11, d=4, h=3)
    emb, items = torch.randn(5, head.d), torch.tensor([3, 0, 10, 3])
    grid = head.scores(emb, items)
    pairs = head.predict(emb.repeat_interleave(len(items), 0), items.repeat(5)).view(5, len(items))
    assert grid.shape == (5, 4) and torch.allclose(grid, pairs, rtol=1e-6, atol=1e-6)


def test_a_file_of_another_contract_version_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    Model(random_head("mf", 4, d=2), torch.ones(2, 2), [0, 1]).save(path)
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert metadata["contract"] == "1"
    save_file(tensors, str(path), metadata={**metadata, "contract": "2"})
    with pytest.raises(ValueError, match="training contract version '2'"):
        Model.load(path)
    del metadata["contract"]  # files from before the version was recorded were written under 1
    save_file(tensors, str(path), metadata=metadata)
    assert Model.load(path).n_users == 2
