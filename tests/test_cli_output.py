"""What a user reads: progress bars on a terminal, the LR-finder plot, bench's roofline column, no internal labels."""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest

from descent.cli import _progress, demo
from descent.cli.main import main
from descent.reporting import bench, plotting
from descent.tasks import get_task


def _as_terminal(monkeypatch) -> None:
    """stdout (pytest's capture at this point) claims to be a terminal; bars are drawn on stderr."""
    pytest.importorskip("tqdm")
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)


def test_progress_bars_on_find_lr_and_bench_only_on_a_terminal(monkeypatch, capsys, tmp_path) -> None:
    _as_terminal(monkeypatch)
    terminal = capsys
    assert main(["find-lr", "--task", "linear", "--num-iter", "12", "--out", str(tmp_path)]) == 0
    assert "LR range test on linear" in terminal.readouterr().err
    assert main(["bench", "--only", "SGD", "--scale", "0.001", "--iters", "1", "--sets", "16M"]) == 0
    assert "bench" in terminal.readouterr().err
    assert main(["find-lr", "--task", "linear", "--num-iter", "12", "--quiet", "--out", str(tmp_path)]) == 0
    assert "LR range test" not in terminal.readouterr().err


def test_demo_lr_test_has_a_progress_bar(monkeypatch, capsys, tmp_path) -> None:
    _as_terminal(monkeypatch)
    terminal = capsys
    args = argparse.Namespace(quiet=False, json=False, seed=0)
    lr, note, plots = demo._find_lr(args, get_task("linear"), tmp_path, 12)
    assert "LR range test" in terminal.readouterr().err and lr > 0 and plots


def test_no_bars_when_not_a_terminal(capsys, tmp_path) -> None:
    assert main(["find-lr", "--task", "linear", "--num-iter", "12", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""
    assert not _progress.enabled(argparse.Namespace(quiet=False, json=False))


def test_loss_axis_is_clipped_above_a_diverging_tail() -> None:
    low, high, clipped = plotting.loss_limits([2.0, 1.9, 1.5, 1.0, 40.0, 1e6])
    assert clipped and 1.0 > low > 0 and high < 5.0
    assert plotting.loss_limits([3.0, 2.0, 1.0]) [2] is False


def test_lr_finder_plot_tells_the_suggestions_apart(monkeypatch, tmp_path) -> None:
    from descent.tools.lr_finder import LRFinderResult

    lrs = [10 ** (-6 + i * 0.25) for i in range(25)]
    losses = [2.0 - 0.05 * i if i < 20 else 2.0 * 10 ** (i - 19) for i in range(25)]
    res = LRFinderResult(lrs, losses, losses, 1e-2, "valley",
                         suggestions={"valley": 1e-2, "steepest": 3e-3, "min_loss": None})
    seen = {}
    save = plotting._save

    def spy(fig, path):
        ax = fig.axes[0]
        seen["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
        seen["styles"] = {(ln.get_color(), ln.get_linestyle()) for ln in ax.get_lines() if ":" in str(ln.get_label())}
        seen["ylim"], seen["title"] = ax.get_ylim(), ax.get_title()
        return save(fig, path)

    monkeypatch.setattr(plotting, "_save", spy)
    path = plotting.lr_finder_plot(res, tmp_path / "lr.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert "valley: 0.01 (suggested)" in seen["labels"] and "steepest: 0.003" in seen["labels"]
    assert "min_loss: no suggestion" in seen["labels"]
    assert len(seen["styles"]) == 3  # each method its own colour and line style
    assert seen["ylim"][1] < max(losses) and "clipped" in seen["title"]


def test_bench_roofline_from_this_run_and_never_above_100_silently(monkeypatch) -> None:
    monkeypatch.setattr(bench, "measure_bandwidth", lambda numel: 1e-3)  # a tiny bandwidth: every row > 100 %
    bw, results = bench.run(only=["SGD"], scale=0.001, iters=1, sets=["16M"], rounds=1)
    over = [r for r in results if r.roofline_pct is not None and r.roofline_pct > 100]
    assert bw == 1e-3 and over and all(r.note == bench.ABOVE_ROOFLINE for r in over)
    table = bench.format_table(bw, results)
    assert re.search(r"\d+%\*", table) and "* above 100 %" in table
    monkeypatch.setattr(bench, "measure_bandwidth", lambda numel: 1e6)  # huge: no row above
    bw, results = bench.run(only=["SGD"], scale=0.001, iters=1, sets=["16M"], rounds=1)
    assert all(r.note == "" for r in results) and "* above" not in bench.format_table(bw, results)
    with pytest.raises(ValueError, match="scale"):
        bench.run(scale=math.nan)


def test_user_output_has_no_internal_source_labels_and_recipe_notes_match(tmp_path, capsys) -> None:
    assert main(["train", "--task", "linear", "--recipe", "quick", "--lr", "0.005", "--steps", "3",
                 "--out", str(tmp_path / "r"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    text = " ".join(payload["notes"])
    assert payload["lr"] == 0.005 and "lr 0.005 as given" in text
    assert not re.search(r"\[\d{3} |source document", text), text
    assert main(["lab", "lr-sensitivity", "--steps", "2", "--out", str(tmp_path / "lab")]) == 0
    out = capsys.readouterr().out
    assert "source document" not in out and not re.search(r"\b00\d\b", out), out
    assert main(["lab", "--help"]) == 0
    assert "source" not in capsys.readouterr().out
