"""descent.integrations.DescentLightningCallback and descent's plateau schedule in a real Lightning fit."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import descent  # noqa: E402
from descent import schedules as S  # noqa: E402
from descent.reporting.logs import read_log  # noqa: E402
from descent.integrations import DescentLightningCallback  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # imports transformers / lightning and runs their loops (~15 s)


class Tiny(pl.LightningModule):
    def __init__(self, sched_config):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.sched_config = sched_config

    def training_step(self, batch, idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, idx):
        x, y = batch
        self.log("val_loss", torch.tensor(1.0))  # a flat validation loss: the plateau must reduce

    def configure_optimizers(self):
        opt = descent.AdamW(self.parameters(), lr=1e-3)
        self.plateau = S.ReduceLROnPlateau(factor=0.5, patience=0)
        self.sched = S.Scheduler(opt, S.join([S.LinearWarmup(4), self.plateau], [4]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step", **self.sched_config}}


def _loader(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1)), batch_size=8)


def _fit(tmp_path, sched_config, cb=None):
    torch.manual_seed(0)
    module = Tiny(sched_config)
    trainer = pl.Trainer(max_steps=32, val_check_interval=8, limit_val_batches=1, num_sanity_val_steps=0,
                         logger=pl.loggers.CSVLogger(str(tmp_path)), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         log_every_n_steps=1,
                         callbacks=[pl.callbacks.LearningRateMonitor("step")] + ([cb] if cb else []))
    trainer.fit(module, _loader(), _loader(8))
    return module, trainer


def test_fit_with_callback_feeds_the_plateau_and_runs_the_doctor(tmp_path):
    cb = DescentLightningCallback(lr_finder=True, lr_finder_iters=10)
    module, trainer = _fit(tmp_path, {}, cb)
    assert module.sched.last_epoch == 32  # advanced every step, not stuck in the warmup
    # four validations of 1.0: the first sets the best, each later one reduces (patience 0)
    assert module.plateau.num_reductions == 3
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 3)
    hist = cb.monitor.history
    assert [r["step"] for r in hist] == list(range(1, 33)) and all(math.isfinite(r["loss"]) for r in hist)
    assert [r["step"] for r in hist if "val_loss" in r] == [8, 16, 24, 32]
    assert all(r["grad_norm"] > 0 and r["layer_grad_norm"] for r in hist)  # grads still there at batch end
    assert cb.findings is not None and cb.lr_result is not None
    log = cb.doctor.jsonl
    assert log.exists() and len(log.read_text().splitlines()) == 32
    # the doctor also reads Lightning's CSVLogger metrics.csv (train_loss, val_loss)
    cols = read_log(trainer.log_dir)
    assert len([v for v in cols["loss"] if v is not None]) == 32 and cols["val_loss"].count(1.0) == 4
    assert cols["lr"][-1] == pytest.approx(1e-3 * 0.5 ** 2)  # lr-AdamW, logged before the last validation


def test_lightning_step_metric_drives_the_plateau_schedule(tmp_path):
    # Lightning calls scheduler.step(metric) every step with reduce_on_plateau=True
    module, _ = _fit(tmp_path, {"reduce_on_plateau": True, "monitor": "val_loss", "strict": False})
    # Lightning skips the update (strict=False) until the first validation at step 8, then steps every step
    assert module.sched.last_epoch >= 24
    # each evaluation fed once, not once per step: the one at step 8 lands in the (delayed) warmup,
    # 16 sets the best, 24 and 32 reduce (one per step would have given ~16 reductions)
    assert module.plateau.num_reductions == 2
    assert module.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 2)
