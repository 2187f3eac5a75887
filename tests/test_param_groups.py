"""descent.param_groups: decay on matrices/kernels only, every trainable param once, names kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import descent


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.ln = nn.LayerNorm(8)
        self.rms = nn.RMSNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.scale = nn.Parameter(torch.ones(8))
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def _names(groups, wd):
    return [n for g in groups if g["weight_decay"] == wd for n in g["param_names"]]


def test_split_and_names():
    model = Tiny()
    groups = descent.param_groups(model, weight_decay=0.1)
    assert _names(groups, 0.1) == ["conv.weight", "fc.weight"]
    assert set(_names(groups, 0.0)) == {
        "emb.weight", "conv.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias", "rms.weight",
        "gn.weight", "gn.bias", "fc.bias", "scale"}
    for g in groups:
        assert len(g["params"]) == len(g["param_names"])


def test_every_trainable_param_exactly_once_and_frozen_left_out():
    model = Tiny()
    groups = descent.param_groups(model, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.frozen.weight) not in ids


def test_embeddings_configurable_and_patterns_and_types():
    model = Tiny()
    groups = descent.param_groups(model, weight_decay=0.1, decay_embeddings=True, no_decay=["fc.*", nn.Conv1d])
    assert _names(groups, 0.1) == ["emb.weight"]


def test_user_defined_norm_is_recognised_and_extra_options_copied():
    class MyRMSNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4, 4))  # 2-D on purpose

    model = nn.Sequential(nn.Linear(4, 4), MyRMSNorm())
    groups = descent.param_groups(model, weight_decay=0.05, lr=1e-3)
    assert _names(groups, 0.05) == ["0.weight"]
    assert all(g["lr"] == 1e-3 for g in groups)


def test_groups_drive_an_optimizer_and_state_dict_keeps_names():
    model = Tiny()
    opt = descent.AdamW(descent.param_groups(model, weight_decay=0.1), lr=1e-3)
    out = model.fc(model.emb(torch.tensor([1, 2, 3]))).sum()
    out.backward()
    opt.step()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == ["conv.weight", "fc.weight"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_decay=-1.0), "Invalid weight_decay: -1.0"),
    (dict(no_decay=[3]), "Invalid no_decay entries"),
    (dict(params=[]), "set by param_groups itself"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        descent.param_groups(Tiny(), **kwargs)
    with pytest.raises(ValueError, match="expected a torch.nn.Module"):
        descent.param_groups([torch.zeros(2)])
