"""The `mmembed` command.

Subcommands import their machinery lazily, so `mmembed --help` stays fast. Bad input ends
in one line, `mmembed COMMAND: error: ...`, naming the flag to change (exit status 2; 1
when the machine is at fault, e.g. a full disk); `-v` adds the traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctr_eval.checks import positive_int_arg

logger = logging.getLogger(__name__)

DEFAULT_ENCODERS = ("sbert", "clip")
ITEM_INFO_DIM = 128  # the challenge's item_emb_d128


class CommandError(Exception):
    """A failure said in the command line's terms; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _configure_logging(args: argparse.Namespace) -> None:
    from ctr_eval.logs import configure_cli_logging

    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    # a recipe run keeps its INFO records in the run's log; its console shows step lines,
    # progress bars and warnings
    quiet_console = args.command in ("run", "demo") and level == logging.INFO
    configure_cli_logging(level, console_level=logging.WARNING if quiet_console else None)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


# -- synth, validate, summary, encoders, demo ------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from mmembed.datasets.synthetic import generate

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CommandError(f"--out {out} is not empty; pass --overwrite to replace a generated data set there")
    stats = generate(
        out, scale=args.scale, seed=args.seed,
        progress=not args.quiet, image_zip=args.zip, overwrite=args.overwrite,
    )
    from mmembed.datasets import format_summary, summarize

    print(format_summary(summarize(out)))
    logger.debug("generator stats: %s", stats)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mmembed.datasets import validate_dataset

    report = validate_dataset(args.data_dir, require_images=args.require_images,
                              progress=not args.quiet)
    print(report.format())
    return 0 if report.ok else 1


def cmd_summary(args: argparse.Namespace) -> int:
    from mmembed.datasets import format_summary, summarize

    print(format_summary(summarize(args.data_dir)))
    return 0


def cmd_fusions(args: argparse.Namespace) -> int:
    import inspect

    from mmembed.fusion import FUSIONS

    for name in FUSIONS.names():
        cls = FUSIONS.get(name)
        summary = (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""
        params = ", ".join(cls.param_names())
        print(f"{name:14s} {summary}\n{'':14s} parameters: {params}"
              + ("; learns from train histories" if cls.uses_sequences else ""))
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    from mmembed.encoders import encoders_table

    print(encoders_table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmembed.demo import run_demo

    try:
        return run_demo(args.out, seed=args.seed, quick=args.quick, overrides=args.overrides,
                        progress=not args.quiet)
    except FileNotFoundError as err:
        raise CommandError(str(err)) from err


# -- extract: every check first, then the encoding, then all outputs at once ----------------
@dataclass
class _ExtractPlan:
    encoders: list[Any]
    head: Any
    catalog: Any


def cmd_extract(args: argparse.Namespace) -> int:
    from mmembed._distributed import current_process
    from mmembed.api import extract
    from mmembed.cache import CacheWriteError

    plan = _plan_extract(args)
    try:
        embeddings = extract(
            plan.catalog, encoders=plan.encoders, fusion=plan.head, dim=None,
            cache_dir=args.cache_dir, batch_size=args.batch_size, num_workers=args.num_workers,
            shard_size=args.shard_size, progress=not args.quiet,
        )
    except CacheWriteError as err:
        raise CommandError(
            f"{err}; free space there or pass another --cache-dir (the shards already "
            f"written are kept: a rerun computes only the missing ones)", status=1,
        ) from err
    if not current_process().is_main:
        return 0
    written = _write_outputs(embeddings, args)
    if args.out and getattr(plan.head, "checkpoint_dir", None) == _fit_checkpoint(args.out):
        shutil.rmtree(_fit_checkpoint(args.out), ignore_errors=True)  # the fit's outputs are written
    untrained = "  (UNTRAINED random-init encoders)" if embeddings.untrained else ""
    print(f"{len(embeddings)} items -> {embeddings.dim} dims{untrained}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _plan_extract(args: argparse.Namespace) -> _ExtractPlan:
    """Build and check everything an extraction needs; nothing is encoded or written."""
    from mmembed.datasets import ItemCatalog

    _check_output_paths(args)
    if args.item_info and args.dim is not None and args.dim != ITEM_INFO_DIM:
        raise CommandError(f"--item-info writes the challenge's 128-d item_emb_d128; got --dim {args.dim}")
    fusion = _parse_fusion(args.fusion)
    dim = _resolve_dim(args, fusion)
    encoders = ([_build_encoder(text, f"--encoder {text}") for text in args.encoder]
                or [_build_encoder(name, f"default encoder {name} (no --encoder given)")
                    for name in DEFAULT_ENCODERS])
    head = _build_fusion(args, fusion, dim, encoders)
    catalog = ItemCatalog.from_dir(args.data_dir, progress=not args.quiet)
    if args.item_info:
        _check_item_info_inputs(args, catalog)
    return _ExtractPlan(encoders, head, catalog)


def _check_output_paths(args: argparse.Namespace) -> None:
    if args.out:
        _check_writable(Path(args.out), "--out", folder=True)
    if args.item_info:
        _check_writable(Path(args.item_info), "--item-info", folder=False)
    if args.like:
        if not args.item_info:
            raise CommandError("--like names where --item-info takes item_tags from; add --item-info PATH")
        if not Path(args.like).exists():
            raise CommandError(f"--like {args.like}: not found; expected an item_info.parquet "
                               f"or a dataset folder holding one")


def _check_writable(path: Path, flag: str, folder: bool) -> None:
    """``path`` (a folder or a file to create) can be written: refuse it up front if not."""
    if folder and path.exists() and not path.is_dir():
        raise CommandError(f"{flag} {path} exists and is not a folder")
    if not folder and path.is_dir():
        raise CommandError(f"{flag} {path} is a folder; give the file to write, e.g. {path / 'item_info.parquet'}")
    start = path.absolute() if folder else path.absolute().parent
    existing = next(p for p in (start, *start.parents) if p.exists())
    if not existing.is_dir():
        raise CommandError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{flag} {path}: no permission to write in {existing}")


def _parse_fusion(text: str) -> str | dict[str, Any] | None:
    from mmembed.api import parse_spec

    if text == "none":
        return None
    try:
        return parse_spec(text)
    except ValueError as err:
        raise CommandError(f"--fusion {text}: {err}") from err


def _resolve_dim(args: argparse.Namespace, fusion: Any) -> int | None:
    """--dim, or the fusion spec's own dim, or 128; None keeps the features' width."""
    spec_dim = fusion.get("dim") if isinstance(fusion, dict) else None
    if args.dim is not None and spec_dim is not None and spec_dim != args.dim:
        raise CommandError(f"--fusion {args.fusion} sets dim={spec_dim} but --dim is {args.dim}; give the width once")
    if args.dim is not None:
        return args.dim
    return None if fusion is None or spec_dim is not None else ITEM_INFO_DIM


def _build_encoder(text: str, where: str) -> Any:
    from mmembed.api import parse_spec
    from mmembed.encoders import create_encoder
    from mmembed.weights import WeightsNotAvailable

    try:
        spec = parse_spec(text)
        return create_encoder(spec)
    except WeightsNotAvailable as err:
        name = spec if isinstance(spec, str) else spec.get("name")
        raise CommandError(f"{where}: {_weights_hint(str(err), name)}") from err
    except (ValueError, TypeError) as err:
        raise CommandError(f"{where}: {err}") from err


def _weights_hint(message: str, name: str) -> str:
    """The weights error in flag terms, and for clip the offline spec the demo uses."""
    from mmembed.api import format_spec
    from mmembed.demo import OFFLINE_CLIP

    message = message.replace("pass model='local-dir:/path/to/folder'",
                              f"pass --encoder {name}:model=local-dir:/path/to/folder")
    if name != "clip":
        return message
    message = message.replace("pass its path instead", "pass its path as --encoder clip:pretrained=/path/to/file")
    return (f"{message}. Offline, the demo uses a RANDOM-INIT clip instead (untrained weights: "
            f"its vectors carry no learned meaning, and the provenance says so): "
            f"--encoder {format_spec(OFFLINE_CLIP)}")


def _build_fusion(args: argparse.Namespace, fusion: Any, dim: int | None, encoders: list[Any]) -> Any:
    """The fusion head, its width checked against the encoders' and --item-info's."""
    from mmembed.api import build_head, check_widths, encoder_labels

    widths = [e.dim for e in encoders]
    if fusion is None:
        if args.dim is not None and args.dim != sum(widths):
            raise CommandError(
                f"--fusion none keeps the encoders' features as they are ({sum(widths)} dims in "
                f"all: {widths}), but --dim is {args.dim}; leave out --dim or choose a fusion head"
            )
        head, width = None, sum(widths)
    else:
        try:
            head = build_head(fusion, dim)
        except (ValueError, TypeError) as err:
            raise CommandError(f"--fusion {args.fusion}: {err}") from err
        width = getattr(head, "dim", None)
        try:
            check_widths(head, dict(zip(encoder_labels([e.name for e in encoders]), widths)), None)
        except ValueError as err:
            raise CommandError(f"--dim {width}: {err}") from err
    if args.item_info and width is not None and width != ITEM_INFO_DIM:
        raise CommandError(f"--item-info writes the challenge's 128-d item_emb_d128, but "
                           f"--fusion {args.fusion} gives {width} dims; use --dim 128")
    if args.out and head is not None and hasattr(head, "checkpoint_dir") and head.checkpoint_dir is None:
        # a killed fit resumes from its last evaluation on the same command
        head.checkpoint_dir = _fit_checkpoint(args.out)
    return head


def _fit_checkpoint(out: str) -> str:
    """Where ``extract --out OUT`` keeps a trained head's fit until its outputs are written."""
    return str(Path(out) / "fit_checkpoint")


def _check_item_info_inputs(args: argparse.Namespace, catalog: Any) -> None:
    """Item ids 1..N and an item_tags source of N+1 rows, as --item-info will need."""
    import numpy as np

    from mmembed.datasets import find_layout
    from mmembed.item_info import tags_from

    n_items = len(catalog)
    if not np.array_equal(np.sort(catalog.item_ids), np.arange(1, n_items + 1)):
        raise CommandError(f"--item-info needs item ids exactly 1..{n_items} (row i = item i); "
                           f"the items of {args.data_dir} are not")
    if args.like:
        like, where = Path(args.like), f"--like {args.like}"
    else:
        like = find_layout(args.data_dir).item_info
        where = "item_tags come from the dataset's own item_info.parquet (--like takes them elsewhere)"
        if not like.is_file():
            return
    try:
        tags_from(like, n_items)
    except (ValueError, FileNotFoundError) as err:
        raise CommandError(f"{where}: {err}") from err


def _write_outputs(embeddings: Any, args: argparse.Namespace) -> list[Path]:
    """Write --item-info and --out all or nothing: every file to a temporary name beside
    its target first (the item_info read back and checked), then all renamed into place."""
    scratch: list[Path] = []
    try:
        staged = _stage_outputs(embeddings, args, scratch)
        for tmp, final in staged:
            os.replace(tmp, final)  # same folder: no copy, and nothing left to fail but the rename
    finally:
        for path in scratch:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return [final for _, final in staged]


def _stage_outputs(embeddings: Any, args: argparse.Namespace, scratch: list[Path]) -> list[tuple[Path, Path]]:
    """(temporary file, target) pairs, every target's folder made."""
    staged = []
    if args.item_info:
        target = Path(args.item_info)
        tmp = _scratch_path(target, scratch, folder=False)
        _stage(target, lambda: embeddings.save_item_info(tmp, like=args.like))
        staged.append((tmp, target))
    if args.out:
        out = Path(args.out)
        tmp_dir = _scratch_path(out, scratch, folder=True)

        def save() -> None:
            embeddings.save(tmp_dir)
            out.mkdir(exist_ok=True)

        _stage(out, save)
        staged += [(f, out / f.name) for f in sorted(tmp_dir.iterdir())]
    return staged


def _scratch_path(target: Path, scratch: list[Path], folder: bool) -> Path:
    """A fresh temporary file or folder beside ``target`` (same file system: renames are atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        path = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staged", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".staged", dir=target.parent)
        os.close(fd)
        path = Path(name)
    scratch.append(path)
    return path


def _stage(target: Path, write: Any) -> None:
    try:
        write()
    except OSError as err:
        raise CommandError(f"cannot write {target}: {err.strerror or err}; nothing was written", status=1) from err


# -- the parser and main ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmembed",
        description="Multimodal item embeddings for recommendation (MicroLens / MM-CTR layout).",
    )
    _add_log_flags(parser, top=True)
    # The same flags after the command (`mmembed extract ... -v`); absent there, they keep
    # the values given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_log_flags(common, top=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub, common)
    _add_synth(sub, common)
    p = _parser(sub, common, "validate",
                       help="check a dataset against what the challenge's loader assumes")
    p.add_argument("data_dir", help="dataset root (holding MicroLens_1M_x1/) or that folder itself")
    p.add_argument("--require-images", action="store_true",
                   help="treat missing or undecodable cover images as errors")
    p.set_defaults(func=cmd_validate)
    _add_extract(sub, common)
    p = _parser(sub, common, "encoders",
                       help="list the registered encoders and whether their weights are here")
    p.set_defaults(func=cmd_encoders)
    p = _parser(sub, common, "fusions", help="list the registered fusion heads")
    p.set_defaults(func=cmd_fusions)
    p = _parser(sub, common, "summary", help="print a summary table of a dataset")
    p.add_argument("data_dir")
    p.set_defaults(func=cmd_summary)
    from mmembed.recipes.cli import add_run_parser

    add_run_parser(sub, common)
    return parser


EXAMPLES = {
    "validate": "mmembed validate DATA\n  mmembed validate DATA --require-images",
    "encoders": "mmembed encoders           # name, width, whether weights are here",
    "fusions": "mmembed fusions            # name and what each head does",
    "summary": "mmembed summary DATA",
    "synth": "mmembed synth --scale small --seed 0 --out /tmp/synthetic_small\n"
             "  mmembed synth --scale tiny --out /tmp/tiny --zip",
    "extract": "mmembed extract DATA --encoder sbert --encoder pixels --fusion contrastive --out emb/\n"
               "  mmembed extract DATA --encoder sbert --item-info my/item_info.parquet   # the challenge's file",
}


def _parser(sub: Any, common: argparse.ArgumentParser, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with examples."""
    return sub.add_parser(name, parents=[common], epilog="example:\n  " + EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _add_log_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
                        help="show the traceback of an error; -vv: debug log output too")
    parser.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="warnings and errors only, no progress bars")


def _add_demo(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common],
                       help="the main job on synthetic MicroLens data (what run.sh demo runs)",
                       description="Run the shipped recipe recipes/demo.yaml: synthetic MicroLens (demo scale), "
                                   "the offline encoders, the fusion heads against the provided, random "
                                   "and oracle tables under the fixed DIN, neighbour checks, the report.",
                       epilog="example:\n  mmembed demo                 # -> runs/demo/report/index.html\n"
                              "  mmembed demo --quick         # the same on the tiny set\n"
                              "  mmembed demo --set seeds=[1,2,3]",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="run folder (default: runs/demo; with --quick: runs/demo-quick)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="synthetic data seed (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="tiny data and one short epoch: a smoke run of the whole pipeline")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the demo recipe, repeatable (as for `mmembed run`)")
    p.set_defaults(func=cmd_demo)


def _add_synth(sub: Any, common: argparse.ArgumentParser) -> None:
    from mmembed.datasets.synthetic.scales import SCALES

    p = _parser(sub, common, "synth", help="write a synthetic MicroLens dataset with a known truth")
    p.add_argument("--scale", choices=list(SCALES), default="small")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--zip", action="store_true", help="pack the covers as item_images.zip")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset if --out already holds files")
    p.set_defaults(func=cmd_synth)


def _add_extract(sub: Any, common: argparse.ArgumentParser) -> None:
    p = _parser(sub, common, "extract", help="encode items and fuse them into item embeddings")
    p.add_argument("data_dir", help="dataset root (holding MicroLens_1M_x1/) or that folder itself")
    p.add_argument("--encoder", action="append", default=[], metavar="SPEC",
                   help="NAME, NAME:key=value,... or JSON; repeatable (default: sbert and clip)")
    p.add_argument("--fusion", default="concat_pca", help="fusion head spec, or 'none'")
    p.add_argument("--dim", type=positive_int_arg,
                   help="output width (default 128; with --fusion none, the features' own width)")
    p.add_argument("--out", help="folder for the embeddings (npz) and their provenance")
    p.add_argument("--item-info", help="write a challenge-format item_info.parquet here")
    p.add_argument("--like", help="item_info.parquet (or dataset) to take item_tags from")
    p.add_argument("--cache-dir", help="feature cache (default $MMEMBED_CACHE or ~/.cache/mmembed/features)")
    p.add_argument("--batch-size", type=positive_int_arg)
    p.add_argument("--num-workers", type=_non_negative_int, help="image-decoding DataLoader workers")
    p.add_argument("--shard-size", type=positive_int_arg, default=4096, help="items per cache shard")
    p.set_defaults(func=cmd_extract)


def _exit_status(err: BaseException) -> int | None:
    """2 for bad input, 1 for a machine at fault (disk full ...), None for a bug."""
    if isinstance(err, CommandError):
        return err.status
    if isinstance(err, (ValueError, TypeError, FileNotFoundError)):  # DatasetError is a ValueError
        return 2
    if isinstance(err, OSError):
        return 1
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    from ctr_eval.progress import quiet

    try:
        with quiet(args.quiet):  # -q: no progress output from any stage
            return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        status = _exit_status(err)
        if status is None:
            raise
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"mmembed {args.command}: error: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
