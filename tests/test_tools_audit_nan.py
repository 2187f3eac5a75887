"""Configuration audit and the NaN tracer."""

import pytest
import torch
from torch import nn

import descent
from descent.tools.audit import AUDIT_CODES

torch.set_num_threads(1)


def _tf():
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)


def test_each_audit_rule_fires_and_a_good_config_is_silent():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    codes = descent.audit(torch.optim.SGD(mlp.parameters(), lr=0.01, weight_decay=1e-4), mlp).codes
    assert codes == ["decay_on_bias_norm", "sgd_no_momentum"]
    tf = _tf()
    codes = descent.audit(torch.optim.AdamW(tf.parameters(), lr=1e-3, weight_decay=0.0), tf).codes
    assert codes == ["zero_weight_decay", "adamw_lr_high_transformer", "no_warmup", "no_clipping"]
    rnn = nn.LSTM(4, 8)
    assert "no_clipping" in descent.audit(torch.optim.Adam(rnn.parameters(), lr=1e-4), rnn).codes
    opt = torch.optim.SGD(mlp.parameters(), lr=0.01, momentum=0.9)
    f = descent.audit(opt, mlp, batch_size=256, base_batch_size=32, base_lr=0.01)
    assert f.codes == ["batch_lr_unscaled"] and f[0].evidence["suggested_lr"] == pytest.approx(0.08)
    assert descent.audit(opt, mlp, batch_size=256, base_batch_size=32, base_lr=0.00125).codes == []

    # the good configuration: param_groups, lr 3e-4, warmup, clipping
    good = descent.AdamW(descent.param_groups(tf, weight_decay=0.1), lr=3e-4)
    sched = descent.schedules.Scheduler(good, descent.schedules.WarmupCosine(1000, warmup=0.02))
    assert descent.audit(good, tf, sched, clip_norm=1.0).codes == []
    lam = torch.optim.lr_scheduler.LambdaLR(good, lambda s: min(1.0, (s + 1) / 100))
    assert descent.audit(good, tf, lam, clip_norm=1.0).codes == []


def test_audit_codes_documented_and_bad_input():
    assert len(set(AUDIT_CODES)) == len(AUDIT_CODES)
    with pytest.raises(ValueError, match="optimizer"):
        descent.audit("adam")
    f = descent.audit(torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.01, momentum=0.9, weight_decay=0.1))
    assert f.codes == ["decay_on_bias_norm"] and f.notes  # judged by shape, and says so


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class Sqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)


def _planted(op):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), op, nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[:4].fill_(-1.0)  # some ReLU outputs are exactly 0 for positive inputs
        model[0].bias.zero_()
    return model


def test_trace_names_planted_log0():
    model = _planted(Log())
    x, y = torch.rand(5, 4) + 0.1, torch.tensor([0, 1, 2, 0, 1])
    before = [p.grad for p in model.parameters()]
    t = descent.trace_nan(model, x, nn.functional.cross_entropy, y)
    assert (t.module, t.kind, t.phase) == ("2", "output", "forward")
    assert t.finding().code == "nonfinite" and t.finding().evidence["module"] == "2"
    assert [p.grad for p in model.parameters()] == before  # grads left as they were


def test_trace_names_backward_only_culprit():
    model = _planted(Sqrt())  # sqrt(0) = 0 is finite; its gradient is inf
    x, y = torch.rand(5, 4) + 0.1, torch.tensor([0, 1, 2, 0, 1])
    t = descent.trace_nan(model, x, nn.functional.cross_entropy, y)
    assert (t.module, t.kind, t.phase) == ("2", "grad", "backward")
    assert t.loss is not None and t.loss == t.loss


def test_trace_bad_data_and_healthy():
    model = _planted(nn.Identity())
    x = torch.rand(5, 4)
    x[2, 1] = float("nan")
    t = descent.trace_nan(model, x)
    assert (t.module, t.kind) == ("", "input")
    ok = descent.trace_nan(model, torch.rand(5, 4))
    assert not ok.found and ok.finding() is None
    with torch.no_grad():
        model[3].weight[0, 0] = float("inf")
    bad = descent.trace_nan(model, torch.rand(5, 4))
    assert (bad.module, bad.kind) == ("3.weight", "param")
