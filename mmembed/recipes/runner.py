"""Run a recipe: every (embedding, model, seed) it asks for, each step cached, resumable.

A run folder holds::

    recipe.yaml        the resolved recipe        environment.json  versions, git commit
    data.json          where the data is, its fingerprint
    tables/            one .npz per (embedding, seed), with the key of its inputs
    ctr/<model>/<embedding>/seed<s>/   ctr_eval run folders (resumed after a kill)
    checks/            neighbour and proxy-AUC results per (embedding, seed)
    metrics.json, metrics.csv, summary.md, logs/run.log

Every file is written atomically and carries the key (a hash of everything it depends on)
of its inputs, so running the same recipe again computes nothing and prints the same
table, and a changed recipe computes only what changed. Synthetic data and the feature
cache live in ``<runs>/.cache`` and are shared by every recipe.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import yaml

from ctr_eval.format import atomic_path, files_digest, find_layout, write_json
from mmembed.recipes.schema import EmbeddingSpec, ModelSpec, Recipe, RecipeError

logger = logging.getLogger(__name__)

__all__ = ["RunContext", "run_recipe", "judge"]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    cache_dir: Path
    root: Path | None = None  # the dataset root, once known
    fingerprint: str = ""
    progress: bool = True
    say: Callable[[str], None] = print


# --------------------------------------------------------------------------- data


def prepare_data(ctx: RunContext) -> None:
    """Find or generate the data; record where it is and its fingerprint."""
    data = ctx.recipe.data
    if data.is_synthetic:
        root = ctx.cache_dir / "data" / f"synthetic-{data.synthetic}-seed{data.seed}"
        marker = root / ".mmembed-complete.json"
        if not marker.is_file():
            from mmembed.datasets.synthetic import generate

            ctx.say(f"generating synthetic MicroLens ({data.synthetic}, seed {data.seed}) into {root}")
            generate(root, scale=data.synthetic, seed=data.seed, progress=ctx.progress, overwrite=True)
            write_json(marker, {"scale": data.synthetic, "seed": data.seed})
    else:
        root = Path(data.path).expanduser()
    ctx.root = find_layout(root).root
    ctx.fingerprint = data_fingerprint(ctx.root)
    _forget_other_data(ctx)
    write_json(ctx.run_dir / "data.json", {"root": str(ctx.root), "fingerprint": ctx.fingerprint,
                                           **{k: v for k, v in vars(data).items() if v is not None}})


def _forget_other_data(ctx: RunContext) -> None:
    """One run folder holds results of one dataset: when the recipe now points at other
    data (another synthetic seed, another path), the tables, checks and CTR runs of the
    old data are removed before anything is reused."""
    saved = ctx.run_dir / "data.json"
    if not saved.is_file() or json.loads(saved.read_text()).get("fingerprint") == ctx.fingerprint:
        return
    ctx.say(f"{ctx.run_dir} held results of other data; they are removed")
    for name in ("tables", "checks", "ctr"):
        shutil.rmtree(ctx.run_dir / name, ignore_errors=True)


def data_fingerprint(root: Path) -> str:
    """Cheap identity of a dataset: names, sizes and the head and tail bytes of its files."""
    layout = find_layout(root)
    return files_digest([(name, layout.path(name)) for name in layout.FILE_NAMES])


# --------------------------------------------------------------------------- tables


def build_table(ctx: RunContext, spec: EmbeddingSpec, seed: int, truth: Any) -> tuple[np.ndarray | None, dict]:
    """The (N+1, d) table of one embedding and seed, from ``tables/`` when its key matches.
    Its semantic-ID codes, when it has them, are in the same file (:func:`saved_codes`)."""
    from mmembed.recipes.tables import extracted_table, reference_table, table_codes

    encoders = [ctx.recipe.encoders[label] for label in spec.encoders]  # as written: the key
    key = _key("table", spec.name, encoders, spec.fusion, spec.dim, seed, ctx.fingerprint,
               *([spec.codes] if spec.codes is not None else []))
    path = _table_path(ctx, spec, seed)
    if path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) == key:
                table = saved["table"] if saved["table"].size else None
                return table, json.loads(str(saved["info"]))
    codes = None
    if spec.is_reference:
        table, info = reference_table(spec.name, truth, seed), {"fit_seconds": 0.0, "untrained": False}
    else:
        fusion = (spec.fusion or {}).get("name", "no fusion")
        ctx.say(f"  {spec.name}, seed {seed}: features of {', '.join(spec.encoders)} -> {fusion}")
        table, provenance, codes = extracted_table(ctx.root, [with_data_paths(e, ctx.root) for e in encoders],
                                                   spec.fusion, spec.dim, seed,
                                                   ctx.cache_dir / "features", progress=ctx.progress,
                                                   checkpoint_dir=path.with_suffix(".fit"))
        info = {"fit_seconds": provenance["fit_seconds"], "untrained": provenance.get("untrained", False),
                "encoders": [e.get("label", e.get("name")) for e in provenance.get("encoders", [])]}
        if codes is not None:
            info["codes"] = (provenance.get("fusion") or {}).get("diagnostics", {})
    if spec.codes is not None:
        ctx.say(f"  {spec.name}, seed {seed}: semantic IDs of the table (rq)")
        codes, info["codes"] = table_codes(truth.provided if table is None else table, spec.codes, seed)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, key=np.array(key), info=np.array(json.dumps(info)),
                     table=np.zeros(0, np.float32) if table is None else table,
                     **({"codes": codes} if codes is not None else {}))
    return table, info


def _table_path(ctx: RunContext, spec: EmbeddingSpec, seed: int) -> Path:
    return ctx.run_dir / "tables" / f"{spec.name}-seed{seed}.npz"


def saved_codes(ctx: RunContext, spec: EmbeddingSpec, seed: int) -> np.ndarray | None:
    """The (N+1, levels) semantic-ID codes :func:`build_table` kept for this table, if any."""
    with np.load(_table_path(ctx, spec, seed), allow_pickle=False) as saved:
        return saved["codes"] if "codes" in saved.files else None


# --------------------------------------------------------------------------- judge


def judge(root: Path, table: np.ndarray | None, model: ModelSpec, seed: int, run_dir: Path,
          progress: bool = False, codes: np.ndarray | None = None) -> dict:
    """Train and validate one CTR model on one table with one training seed (a Task 1
    model as :func:`task1_settings` says); ``codes``: the table's semantic IDs, for a
    model with ``item_codes``."""
    import ctr_eval

    settings, task1 = task1_settings(model)
    return ctr_eval.evaluate(root, item_info=table, model=model.name, task1=task1,
                             run_dir=run_dir, max_epochs=model.max_epochs, train_rows=model.train_rows,
                             progress=progress, codes=codes if settings.get("item_codes") else None,
                             **{**settings, "seed": seed})


def _ctr_dir(ctx: RunContext, model: ModelSpec, spec: EmbeddingSpec, seed: int) -> Path:
    return ctx.run_dir / "ctr" / model.folder / spec.name / f"seed{seed}"


def attach_covariances(root: Path, records: list[dict], scores: dict[tuple[str, int, str], Path]) -> None:
    """Give each record ``valid_auc_cov``: DeLong's covariance of its valid AUC with those
    of the other tables the same model judged with the same seed (the paired intervals of
    :mod:`mmembed.recipes.compare`). A record whose run kept no valid scores, or scores
    that do not give its recorded AUC on these labels, gets none (no interval, said as such)."""
    import pyarrow.parquet as pq

    from ctr_eval.metrics import auc
    from mmembed.recipes.compare import covariances

    labels = pq.read_table(find_layout(root).valid, columns=["label"]).column("label").to_numpy()
    groups: dict[tuple[str, int], list[tuple[dict, np.ndarray]]] = {}
    for r in records:
        path = scores.get((r["model"], r["seed"], r["embedding"]))
        if path is None or not path.is_file() or r.get("valid_auc") is None:
            continue
        kept = np.load(path)
        if kept.shape != labels.shape or abs(auc(labels, kept) - r["valid_auc"]) > 1e-6:
            logger.warning("%s: not the scores of the recorded valid AUC; no interval for %s, seed %s",
                           path, r["embedding"], r["seed"])
            continue
        groups.setdefault((r["model"], r["seed"]), []).append((r, kept))
    for pairs in groups.values():
        cov = covariances([r["embedding"] for r, _ in pairs], labels, [kept for _, kept in pairs])
        for r, _ in pairs:
            r["valid_auc_cov"] = cov[r["embedding"]]


def run_model(ctx: RunContext, model: ModelSpec, spec: EmbeddingSpec, seed: int,
              table: np.ndarray | None, table_key: str, truth: Any) -> dict:
    """One judged (model, embedding, seed), from its run folder when already finished."""
    from mmembed.recipes.tables import score_run

    from ctr_eval.train import RunDirMismatch

    run_dir = _ctr_dir(ctx, model, spec, seed)
    key = _key("ctr", {k: v for k, v in vars(model).items() if v is not None}, table_key, seed)
    done = run_dir / "recipe_result.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        if saved.get("key") == key:
            return saved["metrics"]
        done.unlink()  # another table, data or model settings: the folder's run may resume or go
    ctx.say(f"  {model.label} on {spec.name}, seed {seed}: training")
    codes = saved_codes(ctx, spec, seed) if model.settings.get("item_codes") else None
    try:
        result = judge(ctx.root, table, model, seed, run_dir, progress=ctx.progress, codes=codes)
    except RunDirMismatch:
        # a run of other settings (the recipe changed): ours replaces it; a killed run of
        # the same settings, or a raised epoch cap, resumes above instead
        ctx.say(f"  ({run_dir} held a run of other settings; starting afresh)")
        shutil.rmtree(run_dir)
        result = judge(ctx.root, table, model, seed, run_dir, progress=ctx.progress, codes=codes)
    metrics = {"valid_auc": result["valid_auc"], "valid_logloss": result["valid_logloss"],
               "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"],
               "train_seconds": sum(h["train_seconds"] for h in result["history"]),
               "history": [{"epoch": h["epoch"], "valid_auc": h["valid_auc"]} for h in result["history"]],
               **score_run(run_dir, ctx.root, truth, task=submission_task(model, spec))}
    write_json(done, {"key": key, "metrics": metrics})
    return metrics


# --------------------------------------------------------------------------- the run


def run_recipe(recipe: Recipe, run_dir: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, progress: bool = True,
               say: Callable[[str], None] = print) -> list[dict]:
    """Run everything the recipe asks for; return the metric records (also in metrics.json)."""
    from mmembed.recipes.checks import run_checks
    from mmembed.recipes.results import write_results
    from mmembed.recipes.tables import load_truth

    from ctr_eval.train import VALID_SCORES_FILE

    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
    ctx = RunContext(recipe, run_dir, Path(cache_dir) if cache_dir else run_dir.parent / ".cache",
                     progress=progress, say=say)
    check_recipe(recipe)
    _make_folder(run_dir)
    with _exclusive(run_dir), _state_recorded(run_dir), _log_to(run_dir / "logs" / "run.log"):
        _write_provenance(ctx)
        prepare_data(ctx)
        truth = load_truth(ctx.root)
        _check_data(ctx, truth)
        check_data_encoders(ctx)
        records, scores = [], {}
        for spec in recipe.embeddings:
            for seed in recipe.seeds:
                table, info = build_table(ctx, spec, seed, truth)
                table_key = _key("table-content", spec.name, seed, _table_digest(table))
                checks = run_checks(ctx, spec, seed, table, truth)
                for model in recipe.models:
                    metrics = run_model(ctx, model, spec, seed, table, table_key, truth)
                    records.append({"embedding": spec.name, "model": model.label, "seed": seed,
                                    "baseline": recipe.baseline, "compare_to": model.compare_to,
                                    **info, **checks, **metrics})
                    scores[model.label, seed, spec.name] = _ctr_dir(ctx, model, spec, seed) / VALID_SCORES_FILE
        attach_covariances(ctx.root, records, scores)
        write_results(ctx, records)
    return records


RUN_STATE_FILE = "run_state.json"  # running / finished / failed, with the time and the error
LOCK_FILE = ".run.lock"


def _make_folder(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except PermissionError:
        raise PermissionError(f"cannot write into the run folder {run_dir}: permission denied; "
                              "pass another --out or fix the folder's permissions") from None


@contextlib.contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    """One ``mmembed run`` per run folder at a time: a second one refuses at once."""
    import fcntl

    handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RecipeError(f"{run_dir} is in use by another `mmembed run` ({holder}); wait for it to "
                          "finish or pass another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_in_progress(run_dir: Path) -> bool:
    """Whether a ``mmembed run`` holds ``run_dir`` now."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def _state_recorded(run_dir: Path) -> Iterator[None]:
    """``run_state.json`` says whether the run finished, so a report of a run that did not
    can say so."""
    now = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # noqa: E731
    started = now()
    write_json(run_dir / RUN_STATE_FILE, {"state": "running", "started": started, "pid": os.getpid()})
    try:
        yield
    except BaseException as err:
        reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
        write_json(run_dir / RUN_STATE_FILE, {"state": "failed", "started": started, "ended": now(),
                                              "error": reason})
        raise
    write_json(run_dir / RUN_STATE_FILE, {"state": "finished", "started": started, "ended": now()})


def check_recipe(recipe: Recipe) -> None:
    """Refuse, before any data is generated or read, every name, setting and width of the
    recipe that cannot work; the message names the recipe file and key."""
    from ctr_eval.config import resolve_config
    from mmembed.encoders import create_encoder
    from mmembed.fusion import create_fusion

    from mmembed.encoders import ENCODERS

    where = recipe.source or "<recipe>"
    with _naming(f"{where}: encoders"):
        for label, encoder in recipe.encoders.items():
            with _naming(f"{where}: encoders.{label}"):
                if _names_data(encoder):  # its files exist once the data does: check_data_encoders
                    ENCODERS.get(encoder["name"])
                else:
                    create_encoder(encoder)  # unknown names, bad options, missing weights
    for i, spec in enumerate(recipe.embeddings):
        if not spec.is_reference and spec.dim != 128 and recipe.models:
            raise RecipeError(f"{where}: embeddings[{i}].dim: {spec.name!r} has dim {spec.dim}, but the CTR "
                              "models read the challenge's 128-d item_emb_d128: set dim: 128")
        if spec.fusion is not None:
            with _naming(f"{where}: embeddings[{i}].fusion"):
                create_fusion({**spec.fusion, "dim": spec.dim} if "dim" in _fusion_params(spec) else spec.fusion)
        if spec.codes is not None:
            with _naming(f"{where}: embeddings[{i}].codes"):  # rq over the 128-d table
                create_fusion({"name": "rq", "dim": 128, **spec.codes}).check_input_widths({"table": 128})
    for i, model in enumerate(recipe.models):
        with _naming(f"{where}: models[{i}].settings"):
            settings, task1 = task1_settings(model)
            resolve_config(model.name, task1=task1, **settings)
        if settings.get("item_codes"):
            lacking = [f"embeddings[{j}] ({spec.name})" for j, spec in enumerate(recipe.embeddings)
                       if not _has_codes(spec)]
            if lacking:
                raise RecipeError(f"{where}: models[{i}].settings.item_codes: {', '.join(lacking)} "
                                  "give no semantic IDs: add `codes: true` (or rq parameters) to each, "
                                  "or use a fusion head that makes codes (rq)")


@contextlib.contextmanager
def _naming(where: str) -> Iterator[None]:
    """Prefix the message of a refusal raised inside with the recipe key it concerns."""
    try:
        yield
    except RecipeError:
        raise
    except (ValueError, TypeError, LookupError) as err:
        raise RecipeError(f"{where}: {err}") from err
    except FileNotFoundError as err:  # e.g. missing weights: keep the type the CLI reports
        raise type(err)(f"{where}: {err}") from err


def is_task1(model: ModelSpec) -> bool:
    """Whether a recipe model is the fixed Task 1 DIN (``task1:``, by default for din)."""
    return model.task1 if model.task1 is not None else model.name == "din"


def submission_task(model: ModelSpec, spec: EmbeddingSpec) -> str:
    """The challenge's leaderboard a run's test submission belongs to: Task1 (an embedding
    under the fixed DIN), Task2 (a free CTR model over the organisers' embedding) or
    Task1&2 (a free model over one's own)."""
    if is_task1(model):
        return "Task1"
    return "Task2" if spec.name == "provided" else "Task1&2"


def task1_settings(model: ModelSpec) -> tuple[dict, bool | None]:
    """(settings, task1 flag to run with) of a recipe model. Task 1 mode locks every field
    but the five tunables, the seed included; a recipe's seeds still have to vary the run,
    so a Task 1 model runs with ``task1=False`` after a check that its settings touch only
    the tunables: the fixed DIN with another seed."""
    from ctr_eval.config import TASK1_TUNABLE

    task1 = is_task1(model)
    settings = dict(model.settings)
    if task1:
        locked = sorted(set(settings) - TASK1_TUNABLE)
        if locked:
            raise ValueError(f"model {model.name!r} runs in Task 1 mode, where only "
                             f"{', '.join(sorted(TASK1_TUNABLE))} may be set; got {locked} "
                             "(set task1: false for a free configuration)")
    return settings, False if task1 else model.task1


DATA_PLACEHOLDER = "{data}"  # in an encoder's string option: the dataset root, e.g. {data}/item_emb.parquet


def _names_data(encoder: Mapping[str, Any]) -> bool:
    return any(isinstance(v, str) and v.startswith(DATA_PLACEHOLDER) for v in encoder.values())


def with_data_paths(encoder: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """The encoder spec with ``{data}`` at the start of a string option replaced by the
    dataset root (so a recipe can name the data's own files, e.g. the provided vectors in
    ``{data}/item_emb.parquet``, wherever the data is)."""
    return {k: str(root) + v[len(DATA_PLACEHOLDER):] if isinstance(v, str) and v.startswith(DATA_PLACEHOLDER)
            else v for k, v in encoder.items()}


def check_data_encoders(ctx: RunContext) -> None:
    """Once the data is there, check the encoders that name its files (before any work)."""
    from mmembed.encoders import create_encoder

    for label, encoder in ctx.recipe.encoders.items():
        if _names_data(encoder):
            with _naming(f"{ctx.recipe.source or '<recipe>'}: encoders.{label}"):
                create_encoder(with_data_paths(encoder, ctx.root))


def _check_data(ctx: RunContext, truth: Any) -> None:
    """Refuse what this data cannot give (the oracle rows need the generator's truth)."""
    for i, spec in enumerate(ctx.recipe.embeddings):
        if spec.is_reference and spec.name in ("oracle", "content_oracle") and truth.latent is None:
            raise RecipeError(f"{ctx.recipe.source or '<recipe>'}: embeddings[{i}]: {spec.name!r} needs the "
                              f"synthetic generator's truth ({ctx.root / 'oracle'} is missing): it exists for "
                              "synthetic data only")


def _has_codes(spec: EmbeddingSpec) -> bool:
    from mmembed.fusion import FUSIONS

    return spec.codes is not None or (spec.fusion is not None and FUSIONS.get(spec.fusion["name"]).makes_codes)


def _fusion_params(spec: EmbeddingSpec) -> list[str]:
    from mmembed.fusion import FUSIONS

    return FUSIONS.get(spec.fusion["name"]).param_names()


def _table_digest(table: np.ndarray | None) -> str:
    return "dataset" if table is None else hashlib.sha256(np.ascontiguousarray(table).tobytes()).hexdigest()[:16]


def _write_provenance(ctx: RunContext) -> None:
    with atomic_path(ctx.run_dir / "recipe.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(ctx.recipe.to_dict(), sort_keys=False), encoding="utf-8")
    write_json(ctx.run_dir / "environment.json", {
        "python": sys.version.split()[0], "packages": _versions(), "git_commit": _git_commit(),
        "recipe_source": ctx.recipe.source, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("mmembed", "torch", "numpy", "pyarrow", "faiss-cpu", "transformers", "open_clip_torch",
                 "sentence-transformers", "accelerate", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Copy the mmembed and ctr_eval log records of the run into ``path`` (INFO and up,
    whatever the console shows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in ("mmembed", "ctr_eval")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()