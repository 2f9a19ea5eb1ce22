"""``mmembed run RECIPE``: the recipe runner on the command line."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXAMPLE = """example:
  mmembed run recipes/demo.yaml
  mmembed run recipes/compare_fusions.yaml --set seeds=[1,2,3] --set data.synthetic=tiny
  mmembed run my.yaml --out runs/mine        # rerun: computes only what is missing
"""


def add_run_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run a recipe: compare embedding strategies side by side",
                       description="Run every (embedding, CTR model, seed) a recipe asks for, each step "
                                   "cached, and write metrics and a summary into the run folder.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a recipe value, repeatable (e.g. seeds=[1,2], models.0.max_epochs=1)")
    p.add_argument("--out", help="run folder (default runs/<recipe name>)")
    p.add_argument("--cache-dir", help="synthetic data and feature cache (default: <run folder>/../.cache)")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from mmembed.recipes import load_recipe, run_recipe
    from mmembed.recipes.results import format_summary

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(args.out) if args.out else Path("runs") / recipe.name
    print(f"recipe {recipe.name}: {len(recipe.embeddings)} embedding(s) x {len(recipe.models)} model(s) "
          f"x {len(recipe.seeds)} seed(s) -> {run_dir}")
    records = run_recipe(recipe, run_dir, cache_dir=args.cache_dir, progress=not args.quiet)
    print()
    print(format_summary(records))
    print(f"\nresults: {run_dir / 'summary.md'}, {run_dir / 'metrics.csv'}")
    return 0
