"""descent.integrations.DescentTrainerCallback in a real transformers Trainer on a tiny local model."""

import json
import math

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from descent.integrations import DescentTrainerCallback  # noqa: E402
from descent.reporting.logs import read_log  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # imports transformers / lightning and runs their loops (~15 s)


class TinyRegressor(nn.Module):
    """A two-layer regressor the Trainer can drive: forward(x, labels) -> {"loss", "logits"}."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x, labels=None):
        out = self.net(x).squeeze(-1)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g)
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def _trainer(out, cb, max_steps=16, lr=0.05, ds=None, **kw):
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=lr,
        logging_steps=1, save_steps=8, eval_strategy="steps", eval_steps=8, report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, data_seed=0, dataloader_num_workers=0, **kw)
    ds = ds or _data()
    return transformers.Trainer(model=TinyRegressor(), args=args, train_dataset=ds, eval_dataset=ds[:16],
                                callbacks=[cb])


def test_trainer_callback_monitors_and_diagnoses(tmp_path):
    cb = DescentTrainerCallback(lr_finder=True, lr_finder_iters=20)
    _trainer(tmp_path, cb).train()
    hist = cb.monitor.history
    assert [r["step"] for r in hist] == list(range(1, 17))
    assert all(math.isfinite(r["loss"]) and "layer_grad_norm" in r and len(r["lrs"]) >= 1 for r in hist)
    assert hist[7]["val_loss"] > 0 and "grad_norm" in hist[0] and isinstance(hist[0]["clipped"], bool)
    assert cb.findings is not None and cb.nonfinite_findings is None
    assert cb.lr_result is not None and len(cb.lr_result.lrs) > 0
    lines = (tmp_path / "descent_monitor.jsonl").read_text().splitlines()
    assert len(lines) == 16 and json.loads(lines[0])["step"] == 1
    assert "findings" in json.loads((tmp_path / "descent_monitor_doctor.json").read_text())
    # the doctor reads the Trainer's own log too
    cols = read_log(tmp_path / "checkpoint-16" / "trainer_state.json")
    assert len(cols["loss"]) == 16 and cols["lr"][0] > 0 and cols["val_loss"][7] > 0


def test_trainer_resume_from_checkpoint_continues_the_log(tmp_path):
    full = DescentTrainerCallback(jsonl=tmp_path / "full.jsonl")
    _trainer(tmp_path / "a", full).train()

    class StopAt12(transformers.TrainerCallback):  # killed after step 12, last checkpoint at 8
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 12:
                control.should_training_stop = True

    first = DescentTrainerCallback(jsonl=tmp_path / "resumed.jsonl")
    t = _trainer(tmp_path / "b", first, save_strategy="steps")
    t.add_callback(StopAt12())
    t.train()
    second = DescentTrainerCallback(jsonl=tmp_path / "resumed.jsonl")
    _trainer(tmp_path / "b", second).train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-8"))
    assert [r["step"] for r in second.monitor.history] == list(range(9, 17))
    cols = read_log(tmp_path / "resumed.jsonl")  # steps 9..12 were logged twice: counted once
    assert cols["step"] == [float(s) for s in range(1, 17)] and any("twice" in n for n in cols.notes)
    ref = {r["step"]: r["loss"] for r in full.monitor.history}
    assert [ref[s] for s in range(9, 17)] == pytest.approx([r["loss"] for r in second.monitor.history], rel=1e-6)


def test_trainer_callback_stops_on_nonfinite(tmp_path):
    cb = DescentTrainerCallback(jsonl=False, stop_on_nonfinite=True)
    ds = _data()
    ds[40] = {"x": torch.full((4,), math.nan), "labels": ds[40]["labels"]}  # a NaN sample
    t = _trainer(tmp_path, cb, ds=ds, max_grad_norm=0.0)
    t.train()
    assert cb.nonfinite_findings is not None and "nonfinite" in cb.nonfinite_findings.codes
    hist = cb.monitor.history  # stopped at the step whose batch held the NaN sample
    assert len(hist) < 16 and hist[-1]["nonfinite_grads"] > 0 and "nonfinite" in cb.findings.codes
