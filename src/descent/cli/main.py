"""Entry point of the ``descent`` command: argparse parsers; the work is in :mod:`.commands`."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from . import commands, demo, tools
from . import train as train_cmd
from ._args import Failure, Parser, UsageError, int_at_least, nonneg_int, positive_float, positive_int

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _common(p: argparse.ArgumentParser, out: str | None = None, seed: int | None = 0) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, only the result")
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p.add_argument("--seed", type=nonneg_int, default=seed,
                   help="seed of data split, shuffling and init (default 0)")
    if out is not None:
        p.add_argument("--out", default=out, help=f"directory for artifacts (default {out})")


def _lr_or_auto(text: str) -> Any:
    """``--lr``: a number > 0, or ``auto`` (the suggestion of ``descent find-lr`` for the run)."""
    return "auto" if text.strip().lower() == "auto" else positive_float(text)


def _sub(sub: argparse._SubParsersAction, name: str, help_: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_, epilog="examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_train_like(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "train", "one monitored training run in a crash-safe run folder (--resume continues exactly)",
             "  descent train --task digits-mlp --recipe quick --steps 300 --out runs/a\n"
             "  descent train --task charlm --optimizer muon --lr 0.02 --out runs/b\n"
             "  descent train --out runs/b --resume          # the settings come from runs/b/run.json")
    p.add_argument("--task", help="a built-in task (descent tasks lists them; default digits-mlp)")
    p.add_argument("--recipe", help="a descent.recipe scenario (quick, cnn, llm, convex, ...)")
    p.add_argument("--optimizer", help="optimizer when no recipe is given (default adamw)")
    p.add_argument("--lr", type=_lr_or_auto, help="learning rate, or 'auto': descent find-lr's suggestion for this "
                   "run (--optimizer, --steps) (default: the task's or the recipe's)")
    p.add_argument("--steps", type=positive_int, help="total steps (default 300)")
    p.add_argument("--clip", type=positive_float, help="clip the global grad norm to this")
    p.add_argument("--eval-every", type=nonneg_int, default=50, help="steps between evaluations (0: at the end)")
    p.add_argument("--checkpoint-every", type=nonneg_int, default=50,
                   help="steps between checkpoints (0: at the end only)")
    p.add_argument("--keep", type=positive_int, default=3, help="checkpoints to keep (default 3)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest readable checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue with a changed --lr, --steps or --clip")
    p.add_argument("--stop-at", type=nonneg_int,
                   help="stop after this many steps, as if interrupted (to try --resume)")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="train data-parallel (FSDP2) in this many local processes; torchrun works too")
    _common(p, "descent-out/train", seed=None)
    p.set_defaults(func=_train)

    p = _sub(sub, "compare", "the same budget for several optimizers, mean ± spread over seeds",
             "  descent compare --task digits-mlp --optimizers sgd,adamw,lion,muon --steps 300 --seeds 3\n"
             "  descent compare --task rosenbrock --optimizers sgd,adam,lion --steps 500")
    p.add_argument("--task", default="digits-mlp")
    p.add_argument("--optimizers", default="sgd,adamw,lion,muon", help="comma-separated names")
    p.add_argument("--lrs", default="", help="per-optimizer lrs, e.g. sgd=0.05,adamw=1e-3")
    p.add_argument("--steps", type=positive_int, default=300)
    p.add_argument("--seeds", type=positive_int, default=1)
    p.add_argument("--tune", type=nonneg_int, default=0,
                   help="tune every optimizer with N quasi-random trials (lr, weight decay, warm-up) on seed 0, "
                        "then rerun each one's best on --seeds fresh seeds (0: no tuning)")
    _common(p, "descent-out/compare")
    p.set_defaults(func=commands.compare)

    p = _sub(sub, "find-lr", "the LR range test on a task, with plot and suggestion",
             "  descent find-lr --task digits-mlp\n  descent find-lr --task charlm --optimizer adamw --num-iter 60")
    p.add_argument("--task", default="digits-mlp")
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--start-lr", type=positive_float, default=1e-7)
    p.add_argument("--end-lr", type=positive_float, default=10.0)
    p.add_argument("--num-iter", type=int_at_least(2), default=100)
    p.add_argument("--steps", type=nonneg_int, default=300,
                   help="the run the suggestion is for, as in 'descent train --steps' (0: the range test alone)")
    _common(p, "descent-out/find-lr")
    p.set_defaults(func=tools.find_lr)


def _add_other(sub: argparse._SubParsersAction) -> None:
    p = _sub(sub, "demo", "LR range test -> recipe run with monitor + doctor -> optimizer comparison -> HTML report",
             "  descent demo\n  descent demo --out /tmp/demo --steps 200\n  descent demo --quick")
    p.add_argument("--task", default="digits-mlp")
    p.add_argument("--steps", type=positive_int, default=300,
                   help="steps of the monitored run and of each compared run")
    p.add_argument("--quick", action="store_true", help="a tiny budget (for smoke tests)")
    _common(p, "descent-out")
    p.set_defaults(func=demo.run)

    p = _sub(sub, "lab", "two short labs: lr sensitivity of SGD, and batch-size scaling rules",
             "  descent lab lr-sensitivity\n  descent lab batch-size --epochs 3")
    p.add_argument("name", choices=["lr-sensitivity", "batch-size"])
    p.add_argument("--steps", type=positive_int, default=20, help="lr-sensitivity: steps per lr (default 20)")
    p.add_argument("--lrs", default="0.01,0.1", help="lr-sensitivity: comma-separated lrs")
    p.add_argument("--task", default="digits-mlp", help="batch-size: the task")
    p.add_argument("--batch-sizes", default="32,64,128,256")
    p.add_argument("--base-lr", type=positive_float, default=0.01)
    p.add_argument("--epochs", type=positive_int, default=3)
    _common(p, "descent-out/lab")
    p.set_defaults(func=tools.lab)

    p = _sub(sub, "doctor", "diagnose a training log (descent JSONL, CSV, TensorBoard event file)",
             "  descent doctor descent-out/train/train.jsonl\n  descent doctor metrics.csv --json")
    p.add_argument("log")
    _common(p)
    p.set_defaults(func=tools.doctor)

    p = _sub(sub, "bench", "optimizer step speed and state memory vs torch and the memory roofline",
             "  descent bench --only AdamW,Lion --scale 0.05\n  descent bench --scale 1 --iters 10")
    p.add_argument("--only", default="", help="comma-separated optimizer names (default: all)")
    p.add_argument("--scale", type=positive_float, default=0.05, help="fraction of the 16M/20M parameter sets")
    p.add_argument("--iters", type=positive_int, default=5)
    p.add_argument("--sets", default="16M,gpt20M")
    _common(p)
    p.set_defaults(func=tools.bench)

    p = _sub(sub, "tasks", "list the built-in tasks and optimizers", "  descent tasks\n  descent tasks --json")
    _common(p)
    p.set_defaults(func=tools.tasks)


def _train(args: argparse.Namespace) -> int:
    """``descent train``: one process, or data-parallel with ``--nproc N`` or under torchrun."""
    from . import distributed

    if not distributed.wants_distributed(args):
        return train_cmd.train(args)
    if "WORLD_SIZE" not in os.environ:  # --nproc N: start the N processes of this same command
        return distributed.spawn(args.nproc, args.argv)
    return distributed.run(args)


def build_parser() -> argparse.ArgumentParser:
    """The ``descent`` argument parser."""
    parser = Parser(
        prog="descent", description="descent: optimizers and training tools on PyTorch, shown on real data",
        epilog="examples:\n  descent demo\n  descent compare --task digits-mlp --optimizers sgd,adamw,lion,muon "
               "--seeds 3\n  descent doctor run.jsonl\nrun 'descent COMMAND --help' for each command's options",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_other(sub)
    _add_train_like(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _run(args: argparse.Namespace, say: Any) -> int:
    """Call the command; every exception becomes one line and an exit code (no traceback)."""
    from descent.checkpoint import CheckpointError

    try:
        return int(args.func(args))
    except UsageError as exc:
        say(f"error: {_one_line(exc)}")
        return EXIT_USAGE
    except (Failure, CheckpointError) as exc:
        say(f"error: {_one_line(exc)}")
        return EXIT_FAIL
    except ImportError as exc:  # a missing optional dependency: the library's message names the extra
        say(f"error: {_one_line(exc)}")
        return EXIT_FAIL
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        say(f"error: cannot read or write{where}: {exc.strerror or _one_line(exc)}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_FAIL
    except Exception as exc:  # a bug: still one line; DESCENT_TRACEBACK=1 shows where
        if os.environ.get("DESCENT_TRACEBACK"):
            raise
        say(f"error: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(set DESCENT_TRACEBACK=1 to see where)")
        return EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0 (ok), 1 (failure) or 2 (usage error). Errors are one line on stderr."""
    try:
        import matplotlib
    except ImportError:  # plots are skipped with a note naming descent[plot]
        pass
    else:
        matplotlib.use("Agg")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    def say(msg: str) -> None:
        print(f"descent {args.command}: {msg}", file=sys.stderr, flush=True)

    def show(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
        say(f"warning: {_one_line(message)}")

    with warnings.catch_warnings():
        warnings.showwarning = show
        return _run(args, say)


if __name__ == "__main__":
    sys.exit(main())
