"""Recipes build optimizers that train their scenario's toy model on real data."""

import math

import pytest
import torch
from torch import nn

import descent
from descent.tools.recipes import SCENARIOS
from tools_runs import batches, dataset, mlp

torch.set_num_threads(1)
CE = nn.functional.cross_entropy


class TinyViT(nn.Module):
    """Digits as 8 row-tokens of 8 pixels through one transformer layer (a toy ViT / LM shape)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 32)
        self.block = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = self.block(self.embed(x.view(-1, 8, 8)))
        return self.head(self.norm(h.mean(1)))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(8 * 64, 10)

    def forward(self, x):
        return self.head(self.conv(x.view(-1, 1, 8, 8)))


def _model(scenario):
    if scenario in ("llm", "vit", "finetune", "large_batch"):
        return TinyViT()
    if scenario == "cnn":
        return TinyCNN()
    return mlp()


def _supervised(scenario, steps=100):
    x, y = dataset("digits")
    model = _model(scenario)
    # vit's lr refers to batch 1024; sqrt-scaled to 64 it needs a longer run than a test allows
    r = descent.recipe(scenario, model, total_steps=steps, batch_size=None if scenario == "vit" else 64,
                       lr=3e-3 if scenario == "finetune" else None)  # from scratch: no pretrained lr to divide
    with torch.no_grad():
        start = float(CE(model(x), y))
    for xb, yb in batches(x, y, 64, steps):
        r.optimizer.zero_grad()
        CE(model(xb), yb).backward()
        if r.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip_norm)
        r.optimizer.step()
        if isinstance(r.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            pass
        else:
            r.scheduler.step()
    if isinstance(r.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        r.scheduler.step(1.0)
    with torch.no_grad():
        return start, float(CE(model(x), y)), r


@pytest.mark.parametrize("scenario", [
    pytest.param(s, marks=pytest.mark.slow) if s == "large_batch" else s  # descent.LAMB: ~10-40 s here
    for s in SCENARIOS if s not in ("gan", "rl", "convex", "online")])
def test_supervised_scenarios_train(scenario):
    start, end, r = _supervised(scenario)
    assert end < 0.85 * start, (scenario, start, end)  # the recipes' lrs are for long runs: a clear drop
    assert r.explanations and all(len(e) == 3 and e[2] for e in r.explanations)


def test_llm_table_values():
    r = descent.recipe("llm", TinyViT(), total_steps=1000)
    g = r.optimizer.param_groups
    assert type(r.optimizer).__name__ == "AdamW" and g[0]["betas"] == (0.9, 0.95)
    assert g[0]["weight_decay"] == 0.1 and g[1]["weight_decay"] == 0.0 and r.clip_norm == 1.0
    assert r.precision == "bf16" and g[0]["lr"] == 0.0  # warmup starts at 0
    assert "norm.weight" in g[1]["param_names"]
    c = descent.recipe("cnn", TinyCNN(), total_steps=100)
    assert c.optimizer.param_groups[0]["nesterov"] and c.optimizer.param_groups[0]["weight_decay"] == 5e-4
    assert descent.recipe("gan", mlp(), 100).optimizer.param_groups[0]["betas"] == (0.5, 0.999)


def test_batch_size_scaling():
    sgd = descent.recipe("cnn", TinyCNN(), 100, batch_size=512)          # reference batch 256
    assert sgd.lr == pytest.approx(0.2)
    adam = descent.recipe("llm", TinyViT(), 100, batch_size=256, base_batch_size=64)
    assert adam.lr == pytest.approx(6e-4)
    assert any(e[0] == "batch size" for e in adam.explanations)


def test_convex_and_online_logistic_regression():
    x, y = dataset("cancer")
    for scenario in ("convex", "online"):
        torch.manual_seed(0)
        model = nn.Linear(30, 2)
        r = descent.recipe(scenario, model, total_steps=200)
        lrs = []
        for xb, yb in batches(x, y, 16, 200):
            r.optimizer.zero_grad(); CE(model(xb), yb).backward(); r.optimizer.step(); r.scheduler.step()
            lrs.append(r.optimizer.param_groups[0]["lr"])
        with torch.no_grad():
            assert float(CE(model(x), y)) < 0.15
        assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < lrs[0]
    # online: lr ~ 1/sqrt(t)
    assert lrs[-1] / lrs[99] == pytest.approx(math.sqrt((100 + 2) / (200 + 2)), rel=1e-6)


@pytest.mark.slow
def test_gan_recipe_trains_a_toy_gan():
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    disc = nn.Sequential(nn.Linear(1, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    rg, rd = descent.recipe("gan", gen, 300), descent.recipe("gan", disc, 300)
    with torch.no_grad():
        init = float(gen(torch.randn(2000, 2)).mean())
    bce = nn.functional.binary_cross_entropy_with_logits
    for _ in range(300):
        real = 3.0 + 0.5 * torch.randn(64, 1)
        fake = gen(torch.randn(64, 2))
        rd.optimizer.zero_grad()
        (bce(disc(real), torch.ones(64, 1)) + bce(disc(fake.detach()), torch.zeros(64, 1))).backward()
        rd.optimizer.step()
        rg.optimizer.zero_grad(); bce(disc(fake), torch.ones(64, 1)).backward(); rg.optimizer.step()
    with torch.no_grad():
        assert abs(float(gen(torch.randn(2000, 2)).mean()) - 3.0) < abs(init - 3.0) - 0.2  # moves to the data


def test_rl_recipe_trains_a_contextual_bandit():
    x, y = dataset("digits")
    torch.manual_seed(0)
    policy = mlp()
    r = descent.recipe("rl", policy, total_steps=200)
    for xb, yb in batches(x, y, 64, 200):
        dist = torch.distributions.Categorical(logits=policy(xb))
        a = dist.sample()
        reward = (a == yb).float()
        loss = -(dist.log_prob(a) * (reward - reward.mean())).mean()
        r.optimizer.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), r.clip_norm); r.optimizer.step(); r.scheduler.step()
    with torch.no_grad():
        assert float((policy(x).argmax(1) == y).float().mean()) > 0.5  # chance: 0.1


def test_bad_input():
    with pytest.raises(ValueError, match="scenario"):
        descent.recipe("llama", mlp(), 100)
    with pytest.raises(ValueError, match="no trainable"):
        descent.recipe("llm", nn.ReLU(), 100)
    with pytest.raises(ValueError, match="total_steps"):
        descent.recipe("llm", mlp(), 0)
