"""Models stay savable with descent's optimizers attached (KFAC's hooks), and Muon says when it has nothing to do."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch

import descent


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_model_with_kfac_pickles_and_saves() -> None:
    model = _mlp()
    opt = descent.KFAC(model, lr=0.01, T_cov=1)
    x = torch.randn(16, 4)
    model(x).pow(2).mean().backward()
    opt.step()
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model)]
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copies.append(torch.load(buf, weights_only=False))
    for c in copies:  # a copy runs and trains; its hooks are inert (no optimizer behind them)
        assert torch.equal(c(x), model(x))
        c(x).sum().backward()
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()  # the original keeps its working hooks
    assert any("A" in s for s in opt._stats.values()) or opt.state


def test_muon_says_when_everything_goes_to_adamw() -> None:
    with pytest.warns(UserWarning, match="none of the 2 parameters is a hidden matrix.*AdamW"):
        descent.Muon(torch.nn.LayerNorm(4), lr=0.02)
    with pytest.warns(UserWarning, match="none of the 1 parameters"):
        descent.Muon([torch.nn.Parameter(torch.zeros(3))], lr=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        descent.Muon(_mlp(), lr=0.02)  # has a hidden matrix: silent
        descent.Muon(torch.nn.Linear(4, 2), head_names=[])  # the head explicitly kept in Muon
