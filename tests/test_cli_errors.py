"""Every subcommand with bad values: one line on stderr naming the value, exit 2 (usage) or 1 (failure), no traceback.

All of these fail before any training, so the sweep is fast.
"""

from __future__ import annotations

import pytest

from descent.cli.main import main


@pytest.fixture
def blocked(tmp_path):
    """A path under a regular file: no one (not even root) can create a folder there."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return str(f / "out")


USAGE = [  # exit code 2
    ["train", "--steps", "0"], ["train", "--steps", "-5"], ["train", "--steps", "nan"], ["train", "--lr", "-1"],
    ["train", "--lr", "0"], ["train", "--lr", "nan"], ["train", "--lr", "inf"], ["train", "--clip", "-1"],
    ["train", "--eval-every", "-1"], ["train", "--checkpoint-every", "-2"], ["train", "--seed", "-1"],
    ["train", "--keep", "0"], ["train", "--task", "nosuch"], ["train", "--optimizer", "adamx"],
    ["train", "--recipe", "nosuch"], ["train", "--resume", "--overwrite"], ["train", "--stop-at", "-1"],
    ["compare", "--steps", "0"], ["compare", "--seeds", "0"], ["compare", "--steps", "nan"],
    ["compare", "--optimizers", "adamw", "--lrs", "adamw=-1"],
    ["compare", "--optimizers", "adamw", "--lrs", "adamw=nan"],
    ["compare", "--optimizers", "adamw", "--lrs", "adamw"], ["compare", "--optimizers", "adamw", "--lrs", "sgd=0.1"],
    ["compare", "--optimizers", "nosuch"], ["compare", "--optimizers", ","], ["compare", "--task", "nosuch"],
    ["find-lr", "--start-lr", "10", "--end-lr", "1e-3"], ["find-lr", "--start-lr", "1", "--end-lr", "1"],
    ["find-lr", "--num-iter", "0"], ["find-lr", "--num-iter", "1"], ["find-lr", "--start-lr", "-1"],
    ["find-lr", "--end-lr", "nan"], ["find-lr", "--optimizer", "nosuch", "--num-iter", "2"],
    ["find-lr", "--task", "nosuch"],
    ["demo", "--steps", "0"], ["demo", "--task", "nosuch"],
    ["lab", "nosuch"], ["lab", "lr-sensitivity", "--steps", "0"], ["lab", "lr-sensitivity", "--lrs", "0.1,-1"],
    ["lab", "lr-sensitivity", "--lrs", "x"], ["lab", "batch-size", "--batch-sizes", "32,0"],
    ["lab", "batch-size", "--base-lr", "0"], ["lab", "batch-size", "--epochs", "0"],
    ["lab", "batch-size", "--task", "nosuch", "--batch-sizes", "16", "--epochs", "1"],
    ["bench", "--scale", "0"], ["bench", "--scale", "-1"], ["bench", "--scale", "nan"], ["bench", "--scale", "100"],
    ["bench", "--iters", "0"], ["bench", "--sets", "32M"], ["bench", "--only", "NoSuch"],
    ["doctor"], ["tasks", "--seed", "x"], ["nosuch"], [],
]


def _one_line_error(capsys, code: int, expected: int, argv: list[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expected, (argv, code, err)
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert "error" in err, err
    return err


@pytest.mark.parametrize("argv", USAGE, ids=lambda a: " ".join(a) or "(none)")
def test_usage_errors_are_one_line_exit_2(argv, tmp_path, capsys) -> None:
    with_out = argv and argv[0] in ("train", "compare", "find-lr", "demo", "lab") and argv != ["lab", "nosuch"]
    extra = ["--out", str(tmp_path / "out")] if with_out else []
    err = _one_line_error(capsys, main(argv + extra), 2, argv)
    bad = [a for a in argv if not a.startswith("-")][1:]  # the offending value is named
    if bad and argv[0] != "tasks":
        assert any(b.split("=")[-1].split(",")[-1] in err for b in bad), err
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), "nothing written before the arguments are checked"


@pytest.mark.parametrize("cmd", [["train", "--steps", "2"], ["compare", "--steps", "1", "--optimizers", "sgd"],
                                 ["find-lr", "--num-iter", "2"], ["demo", "--quick", "--steps", "1"],
                                 ["lab", "lr-sensitivity", "--steps", "1"]], ids=lambda a: a[0])
def test_unwritable_out_fails_first_in_one_line(cmd, blocked, capsys) -> None:
    err = _one_line_error(capsys, main(cmd + ["--out", blocked, "--quiet"]), 1, cmd)
    assert "cannot write to --out" in err and blocked in err


def test_doctor_missing_file_is_a_failure(tmp_path, capsys) -> None:
    err = _one_line_error(capsys, main(["doctor", str(tmp_path / "none.jsonl")]), 1, ["doctor"])
    assert "none.jsonl" in err


def test_internal_errors_are_one_line_too(monkeypatch, tmp_path, capsys) -> None:
    from descent.cli import tools

    def boom(args):
        raise TypeError("something broke")

    monkeypatch.setattr(tools, "tasks", boom)  # the parser is built per call, so it picks this up
    err = _one_line_error(capsys, main(["tasks"]), 1, ["tasks"])
    assert "internal error: TypeError: something broke" in err
