"""The `mmembed` command.

Subcommands import their machinery lazily, so `mmembed --help` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_synth(args: argparse.Namespace) -> int:
    from mmembed.datasets.synthetic import generate

    stats = generate(
        Path(args.out), scale=args.scale, seed=args.seed,
        progress=not args.quiet, image_zip=args.zip, overwrite=args.overwrite,
    )
    from mmembed.datasets import format_summary, summarize

    print(format_summary(summarize(args.out)))
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


def cmd_extract(args: argparse.Namespace) -> int:
    from mmembed._distributed import current_process
    from mmembed.api import extract, parse_spec

    if args.item_info and args.dim != 128:
        raise ValueError(f"--item-info writes the challenge's 128-d item_emb_d128; got --dim {args.dim}")
    embeddings = extract(
        args.data_dir,
        encoders=[parse_spec(spec) for spec in args.encoder] or ["sbert", "clip"],
        fusion=None if args.fusion == "none" else parse_spec(args.fusion),
        dim=args.dim, cache_dir=args.cache_dir, batch_size=args.batch_size,
        num_workers=args.num_workers, shard_size=args.shard_size, progress=not args.quiet,
    )
    if not current_process().is_main:
        return 0
    if args.out:
        embeddings.save(args.out)
    if args.item_info:
        embeddings.save_item_info(args.item_info, like=args.like)
    untrained = "  (UNTRAINED random-init encoders)" if embeddings.untrained else ""
    print(f"{len(embeddings)} items -> {embeddings.dim} dims{untrained}")
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    from mmembed.encoders import encoders_table

    print(encoders_table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmembed.demo import run_demo

    return run_demo(Path(args.workdir), seed=args.seed, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmembed",
        description="Multimodal item embeddings for recommendation (MicroLens / MM-CTR layout).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=1,
                        help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job on synthetic MicroLens data (what run.sh demo runs)")
    p.add_argument("--workdir", default="runs/demo",
                   help="where data, features and results go (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="tiny data and one epoch: a smoke run of the whole pipeline in seconds")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic MicroLens dataset with a known truth")
    p.add_argument("--scale", choices=["tiny", "small", "full"], default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--zip", action="store_true", help="pack the covers as item_images.zip")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset if --out already holds files")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("validate", help="check a dataset against what the challenge's loader assumes")
    p.add_argument("data_dir", help="dataset root (holding MicroLens_1M_x1/) or that folder itself")
    p.add_argument("--require-images", action="store_true",
                   help="treat missing or undecodable cover images as errors")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("extract", help="encode items and fuse them into item embeddings")
    p.add_argument("data_dir", help="dataset root (holding MicroLens_1M_x1/) or that folder itself")
    p.add_argument("--encoder", action="append", default=[], metavar="SPEC",
                   help="NAME, NAME:key=value,... or JSON; repeatable (default: sbert and clip)")
    p.add_argument("--fusion", default="concat_pca", help="fusion head spec, or 'none'")
    p.add_argument("--dim", type=int, default=128, help="output width (default 128)")
    p.add_argument("--out", help="folder for the embeddings (npz) and their provenance")
    p.add_argument("--item-info", help="write a challenge-format item_info.parquet here")
    p.add_argument("--like", help="item_info.parquet (or dataset) to take item_tags from")
    p.add_argument("--cache-dir", help="feature cache (default $MMEMBED_CACHE or ~/.cache/mmembed/features)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-workers", type=int, help="image-decoding DataLoader workers")
    p.add_argument("--shard-size", type=int, default=4096, help="items per cache shard")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("encoders", help="list the registered encoders and whether their weights are here")
    p.set_defaults(func=cmd_encoders)

    p = sub.add_parser("summary", help="print a summary table of a dataset")
    p.add_argument("data_dir")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(0 if args.quiet else args.verbose)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        # Bad input: one clear line, no traceback (use -vv to see it).
        logger.debug("traceback", exc_info=True)
        print(f"mmembed {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
