"""``ctr-eval``: train/validate a CTR model on challenge files, and write a submission.

    ctr-eval train --data DIR [--model din] [--item-info PATH] [--set key=value ...]
                   [--task1/--no-task1] [--max-epochs N] [--train-rows N] [--run-dir R]
    ctr-eval predict --run-dir R --data DIR [--task Task1] [--out DIR]
    ctr-eval models

Several processes, e.g. two on one CPU-only machine (each gives the one-process result
up to float rounding; see ``ctr_eval.train``):

    torchrun --standalone --nproc_per_node 2 -m ctr_eval.cli train ...
    accelerate launch --multi_gpu --num_processes 2 -m ctr_eval.cli train ...
    accelerate launch --cpu --num_processes 2 --mpirun_hostfile HOSTFILE -m ctr_eval.cli train ...

On a machine without a GPU (or with ``--device cpu``) the processes form a CPU (gloo)
group. The global batch stays ``batch_size``; each process takes ``batch_size / P`` rows
of it. Accelerate starts several CPU processes only through mpirun: ``--cpu
--num_processes P`` without ``--mpirun_hostfile`` starts ONE process. The mpirun form
needs MPI (Debian: ``apt-get install openmpi-bin``; HOSTFILE holds ``localhost slots=2``;
as root also ``export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from ctr_eval.checks import positive_int_arg
from ctr_eval.logs import configure_cli_logging
from ctr_eval.progress import quiet
from ctr_eval.submission import TASK_COLUMNS

logger = logging.getLogger(__name__)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs -> dict; values read as JSON (numbers, true/false, null, lists),
    anything that is not JSON stays a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key] = value
    return out


def default_run_dir(model: str, cfg_hash: str, data_dir: str, item_info: str | None,
                    train_rows: int | None = None, codes: str | None = None) -> Path:
    """Same command, same folder: so that re-running a killed command resumes it."""
    key = f"{Path(data_dir).resolve()}|{Path(item_info).resolve() if item_info else 'dataset'}"
    if codes:
        key += f"|{Path(codes).resolve()}"
    rows = f"-rows{train_rows}" if train_rows else ""
    return Path("ctr_eval_runs") / f"{model}-{cfg_hash}-{hashlib.sha256(key.encode()).hexdigest()[:8]}{rows}"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctr-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="on an error, show the Python traceback, not just one line")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on train.parquet, report validation AUC/logloss")
    train.add_argument("--data", required=True, help="dataset root (holds MicroLens_1M_x1/) or that folder")
    train.add_argument("--model", default="din", help="model name (see `ctr-eval models`); default din")
    train.add_argument("--item-info", default=None,
                       help="item_info.parquet whose item_emb_d128 to evaluate (default: the dataset's)")
    train.add_argument("--codes", default=None,
                       help="item_codes.parquet of semantic-ID codes, for --set item_codes=true (Task 2); "
                            "default: the one beside --item-info, else in the dataset's MicroLens_1M_x1/")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, repeatable (Task 1: only embedding_regularizer, "
                            "net_regularizer, net_dropout, learning_rate, batch_size)")
    train.add_argument("--task1", dest="task1", action="store_true", default=None,
                       help="Task 1 mode: the fixed DIN (default for din)")
    train.add_argument("--no-task1", dest="task1", action="store_false", help="free configuration")
    train.add_argument("--max-epochs", type=positive_int_arg, default=None, help="cap on the config's epochs")
    train.add_argument("--train-rows", type=positive_int_arg, default=None,
                       help="train on N train rows drawn at random (seed 0) instead of all: quick comparisons")
    train.add_argument("--run-dir", default=None,
                       help="run folder (default ctr_eval_runs/<model>-<hash>-<data>); resumed if present")
    train.add_argument("--device", choices=["cpu", "cuda"], default=None)
    train.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    train.add_argument("--threads", type=positive_int_arg, default=None,
                       help="torch CPU threads per process (default: cores / processes)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--json", action="store_true", help="print the full result as JSON")

    pred = sub.add_parser("predict", help="score test.parquet with a run's best model; write the zip")
    pred.add_argument("--run-dir", required=True, help="folder of a finished `ctr-eval train` run")
    pred.add_argument("--data", required=True, help="dataset root (holds MicroLens_1M_x1/) or that folder")
    pred.add_argument("--task", default="Task1", choices=list(TASK_COLUMNS), help="submission column")
    pred.add_argument("--out", default=None, help="output folder (default: the run dir)")
    pred.add_argument("--split", default="test", choices=["train", "valid", "test"])
    pred.add_argument("--device", choices=["cpu", "cuda"], default=None)
    pred.add_argument("--no-progress", action="store_true")

    sub.add_parser("models", help="list the registered models")
    for command in (train, pred):  # -q also after the command name
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="log warnings only")
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="on an error, show the Python traceback")
    return parser


def format_result(result: dict[str, Any]) -> str:
    """The result table a person reads."""
    rows = [
        ("model", result["model"]),
        ("config hash", result["config_hash"]),
        ("embedding", result.get("embedding_source", "")),
        ("valid AUC", f"{result['valid_auc']:.6f}"),
        ("valid logloss", f"{result['valid_logloss']:.6f}"),
        ("best epoch", f"{result['best_epoch']} of {result['epochs_run']} ({result['stopped']})"),
        ("train samples/s", f"{result['train_samples_per_s']:.0f}"),
        ("processes", f"{result['num_processes']} on {result['device']}"),
        ("run dir", result["run_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append(f"{'epoch':>5}  {'train BCE':>9}  {'valid AUC':>9}  {'logloss':>8}  {'lr':>8}  {'samples/s':>9}")
    for h in result["history"]:
        mark = " *" if h["epoch"] == result["best_epoch"] else ""
        lines.append(f"{h['epoch']:>5}  {h['train_bce']:>9.5f}  {h['valid_auc']:>9.6f}  "
                     f"{h['valid_logloss']:>8.5f}  {h['lr']:>8.2g}  {h['samples_per_s']:>9.0f}{mark}")
    return "\n".join(lines)


# Python argument names in library messages -> the flags a CLI user typed.
_FLAGS = {
    r"\btask1=False\b": "--no-task1",
    r"\btask1=True\b": "--task1",
    r"\brun_dir\b": "--run-dir",
    r"\bitem_info=": "--item-info ",
    r"\bcodes=PATH": "--codes PATH",
    r"\bmax_epochs\b": "--max-epochs",
    r"\btrain_rows\b": "--train-rows",
    r"\bnum_threads\b": "--threads",
    r"\bmixed_precision\b": "--mixed-precision",
    r"\bdata_dir\b": "--data",
    r"\bout_dir\b": "--out",
}


def cli_message(err: BaseException) -> str:
    """The error's message with Python argument names replaced by CLI flags."""
    text = str(err)
    for pattern, flag in _FLAGS.items():
        text = re.sub(pattern, flag, text)
    return text


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _train(args: argparse.Namespace) -> int:
    from ctr_eval.api import evaluate
    from ctr_eval.config import config_hash, resolve_config

    overrides = parse_set(args.overrides)
    cfg = resolve_config(args.model, task1=args.task1, **overrides)  # refuse bad keys first
    run_dir = args.run_dir or default_run_dir(args.model, config_hash(cfg), args.data, args.item_info,
                                              args.train_rows, args.codes)
    result = evaluate(args.data, item_info=args.item_info, codes=args.codes, model=args.model,
                      task1=args.task1,
                      run_dir=run_dir, max_epochs=args.max_epochs, train_rows=args.train_rows,
                      device=args.device, mixed_precision=args.mixed_precision, progress=not args.no_progress,
                      num_threads=args.threads, **overrides)
    if _is_main_process():
        print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ctr_eval.api import predict

    zip_path = predict(args.run_dir, args.data, task=args.task, out_dir=args.out, split=args.split,
                       device=args.device, progress=not args.no_progress)
    if _is_main_process():
        print(f"wrote {zip_path} (prediction.csv, column {args.task})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    # Under `accelerate launch`, only rank 0 logs progress.
    configure_cli_logging(logging.WARNING if args.quiet or int(os.environ.get("RANK", "0")) != 0
                          else logging.INFO)
    try:
        with quiet(args.quiet):  # -q: no progress output either
            if args.command == "models":
                from ctr_eval.models import list_models

                print("\n".join(list_models()))
                return 0
            if args.command == "train":
                return _train(args)
            return _predict(args)
    except (ValueError, TypeError, OSError) as err:
        if args.verbose:
            raise
        print(f"ctr-eval {args.command}: error: {cli_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
