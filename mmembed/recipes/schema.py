"""Recipe files: YAML parsed into frozen dataclasses, with ``extends`` and ``--set``.

A recipe names the data, the encoders, the embedding tables to compare, the CTR models
that judge them, the seeds and the checks::

    name: compare
    extends: demo.yaml                 # a path relative to this file; keys here win
    data: {synthetic: small, seed: 0}  # or {path: /data/MicroLens}
    seeds: [1, 2, 3]
    encoders:                          # label -> encoder spec (see `mmembed encoders`)
      sbert: {name: sbert}
      pixels: {name: pixels}
      organisers: {name: precomputed, path: "{data}/item_emb.parquet", column: item_emb_d128_v1}
                                       # {data}: the dataset root, wherever the data is
    embeddings:
      - provided                       # the dataset's item_emb_d128
      - random                         # a Gaussian table: the floor
      - oracle                         # synthetic data only: the true latent vectors
      - {name: concat_pca, encoders: [sbert, pixels], fusion: {name: concat_pca}}
      - {name: gated, encoders: [sbert, pixels], fusion: gated,
         codes: {levels: 3, codes: 256}}  # semantic IDs of this table, for item_codes models
    models:
      - {name: din, settings: {batch_size: 2048}, max_epochs: 2}
      - {name: qin, label: qin_codes, task1: false, settings: {item_codes: true},
         compare_to: qin}                # its rows' baseline: model qin's, table by table
    checks: [knn, proxy]
    baseline: concat_pca               # the row every other is compared with (paired
                                       # differences); default concat_pca, else provided

Mappings merge key by key through ``extends``; lists are replaced whole. An unknown key is
an error naming the file, where the key is, and the nearest valid key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mmembed.recipes.compare import default_baseline

__all__ = ["Recipe", "DataSpec", "EmbeddingSpec", "ModelSpec", "RecipeError", "load_recipe", "select_models",
           "parse_recipe", "apply_override", "REFERENCE_TABLES", "CHECKS"]

#: Embedding tables that need no encoder: the dataset's own, a random floor, and on
#: synthetic data the generator's truth (all blocks, or content blocks only).
REFERENCE_TABLES = ("provided", "random", "oracle", "content_oracle")
CHECKS = ("knn", "proxy")

_TOP_KEYS = ("name", "description", "extends", "data", "seeds", "encoders", "embeddings",
             "models", "checks", "baseline")
_DATA_KEYS = ("path", "synthetic", "seed")
_EMBEDDING_KEYS = ("name", "encoders", "fusion", "dim", "codes")
_MODEL_KEYS = ("name", "label", "task1", "settings", "max_epochs", "train_rows", "compare_to")


class RecipeError(ValueError):
    """A recipe file or override that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class DataSpec:
    """Where the data is: a dataset folder, or a synthetic scale generated once."""

    path: str | None = None
    synthetic: str | None = None
    seed: int = 0

    @property
    def is_synthetic(self) -> bool:
        return self.synthetic is not None


@dataclass(frozen=True)
class EmbeddingSpec:
    """One item embedding table to judge: a reference table, or encoders + a fusion head."""

    name: str
    encoders: tuple[str, ...] = ()
    fusion: Mapping[str, Any] | None = None  # None: the encoders' features as they are
    dim: int = 128
    # semantic IDs of this table's items for Task 2 models with item_codes: the rq head's
    # parameters, fitted on the table itself ({} = its defaults); None: none, unless the
    # fusion head makes codes itself
    codes: Mapping[str, Any] | None = None

    @property
    def is_reference(self) -> bool:
        return self.name in REFERENCE_TABLES and not self.encoders


@dataclass(frozen=True)
class ModelSpec:
    """A CTR model that judges every table: Task 1's fixed DIN by default."""

    name: str = "din"
    task1: bool | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    max_epochs: int | None = None
    train_rows: int | None = None  # train on that many random train rows (all when None)
    given_label: str | None = None  # the recipe's `label:`, to run one model in several settings
    compare_to: str | None = None  # another model's label: its rows are this one's baseline, table by table

    @property
    def label(self) -> str:
        if self.given_label:
            return self.given_label
        return self.name if self.task1 is not False else f"{self.name} (task 2)"

    @property
    def folder(self) -> str:
        """Its runs' folder under ``ctr/``: the label when the recipe gives one, else the name."""
        return self.given_label or self.name


@dataclass(frozen=True)
class Recipe:
    name: str
    data: DataSpec
    seeds: tuple[int, ...]
    encoders: Mapping[str, Mapping[str, Any]]
    embeddings: tuple[EmbeddingSpec, ...]
    models: tuple[ModelSpec, ...]
    checks: tuple[str, ...] = CHECKS
    description: str = ""
    source: str = ""  # the file it came from
    baseline: str | None = None  # the embedding every other is compared with

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what a run folder keeps)."""
        return {
            "name": self.name, "description": self.description,
            "data": {k: v for k, v in vars(self.data).items() if v is not None},
            "seeds": list(self.seeds), "encoders": {k: dict(v) for k, v in self.encoders.items()},
            "embeddings": [_embedding_dict(e) for e in self.embeddings],
            "models": [{"name": m.name, **({"label": m.given_label} if m.given_label else {}),
                        **({"compare_to": m.compare_to} if m.compare_to else {}),
                        "task1": m.task1, "settings": dict(m.settings),
                        "max_epochs": m.max_epochs, "train_rows": m.train_rows} for m in self.models],
            "checks": list(self.checks),
            "baseline": self.baseline,
        }


def _embedding_dict(e: EmbeddingSpec) -> Any:
    codes = {} if e.codes is None else {"codes": dict(e.codes)}
    if e.is_reference:
        return {"name": e.name, **codes} if codes else e.name
    return {"name": e.name, "encoders": list(e.encoders), **({"fusion": dict(e.fusion)} if e.fusion else {}),
            "dim": e.dim, **codes}


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (),
                models: list[str] | tuple[str, ...] | None = None) -> Recipe:
    """Read a recipe file, resolve ``extends``, apply ``key.path=value`` overrides, check it;
    ``models``: keep only the CTR models with these labels (:func:`select_models`)."""
    path = Path(path)
    raw = _read_with_extends(path, chain=())
    for item in overrides:
        apply_override(raw, item)
    recipe = parse_recipe(raw, source=str(path))
    return recipe if models is None else select_models(recipe, models)


def select_models(recipe: Recipe, labels: list[str] | tuple[str, ...]) -> Recipe:
    """The recipe with only the CTR models given (each by its `label:`, or its name where it
    has none), in the recipe's order: a run of part of a long recipe, whose runs are the
    full recipe's, so that a later full run reuses them. A kept model's ``compare_to`` must
    be kept too."""
    known = [m.folder for m in recipe.models]
    for label in labels:
        if label not in known:
            near = difflib.get_close_matches(label, known, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise RecipeError(f"{recipe.source}: no model labelled {label!r}{hint} "
                              f"(its models: {', '.join(known)})")
    kept = tuple(m for m in recipe.models if m.folder in labels)
    kept_labels = {m.label for m in kept}
    for m in kept:
        if m.compare_to is not None and m.compare_to not in kept_labels:
            raise RecipeError(f"{recipe.source}: model {m.label!r} is compared with {m.compare_to!r}, which "
                              f"the selection leaves out: add {m.compare_to!r} to the models to run")
    if not kept:
        raise RecipeError(f"{recipe.source}: no model selected (its models: {', '.join(known)})")
    return dataclasses.replace(recipe, models=kept)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys ({', '.join(_TOP_KEYS)}), "
                          f"got {type(data).__name__}")
    return data


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError(f"{path}: `extends` makes a cycle: {cycle}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise RecipeError(f"{path}: `extends` must be the path of another recipe file, got {parent!r}")
    base = _read_with_extends(path.parent / parent, (*chain, resolved))
    merged = _merge(base, data)
    if isinstance(data.get("data"), dict) and isinstance(merged.get("data"), dict):
        for key in _DATA_SOURCES:
            if key in data["data"]:
                _drop_other_source(merged["data"], key)
    return merged


#: a recipe's data is one of these; setting one (``extends``, ``--set``) replaces the other
_DATA_SOURCES = ("path", "synthetic")


def _drop_other_source(data: dict[str, Any], kept: str) -> None:
    for other in _DATA_SOURCES:
        if other != kept:
            data.pop(other, None)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` (value read as YAML) to a raw recipe mapping, in place.
    List items are addressed by index (``models.0.max_epochs=1``)."""
    key_path, sep, text = item.partition("=")
    parts = [p for p in key_path.strip().split(".") if p]
    if not sep or not parts:
        raise RecipeError(f"--set expects key.path=value, got {item!r}")
    value = yaml.safe_load(text) if text.strip() else ""
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, parts[: depth + 1], item)
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, item)] = value
    elif isinstance(node, dict):
        if depth_is_top(parts) and last not in _TOP_KEYS:
            raise RecipeError(_unknown(last, _TOP_KEYS, f"--set {item!r}"))
        if parts[:-1] == ["data"] and last in _DATA_SOURCES:
            _drop_other_source(node, last)
        node[last] = value
    else:
        raise RecipeError(f"--set {item!r}: {'.'.join(parts[:-1])} is a {type(node).__name__}, "
                          "not a mapping or list")


def depth_is_top(parts: list[str]) -> bool:
    return len(parts) == 1


def _step(node: Any, part: str, where: list[str], item: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, item)]
    if not isinstance(node, dict):
        raise RecipeError(f"--set {item!r}: {'.'.join(where[:-1])} is not a mapping or list")
    if part not in node:
        if len(where) == 1 and part not in _TOP_KEYS:
            raise RecipeError(_unknown(part, _TOP_KEYS, f"--set {item!r}"))
        node[part] = {}
    return node[part]


def _list_index(node: list, part: str, item: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise RecipeError(f"--set {item!r}: {part!r} must index a list of {len(node)} items")
    return int(part)


def _unknown(key: str, valid: tuple[str, ...], where: str) -> str:
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"{where}: unknown key {key!r}{hint} (valid keys: {', '.join(valid)})"


# --------------------------------------------------------------------------- checking


def parse_recipe(raw: Mapping[str, Any], source: str = "<recipe>") -> Recipe:
    """A checked :class:`Recipe` from a mapping (after ``extends`` and overrides)."""
    _check_keys(raw, _TOP_KEYS, f"{source}")
    encoders = _encoders(raw.get("encoders") or {}, source)
    embeddings = tuple(_embedding(e, i, encoders, source) for i, e in enumerate(_list(raw, "embeddings", source)))
    if not embeddings:
        raise RecipeError(f"{source}: `embeddings` lists no table to compare")
    names = [e.name for e in embeddings]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RecipeError(f"{source}: embeddings {repeated} appear more than once; give each its own name")
    models = tuple(_model(m, i, source) for i, m in enumerate(_list(raw, "models", source, [{"name": "din"}])))
    kinds = [m.folder for m in models]
    repeated = sorted({n for n in kinds if kinds.count(n) > 1})
    if repeated:
        raise RecipeError(f"{source}: models {repeated} appear more than once; a run keeps one run per model "
                          "and table: give each a `label:` of its own (e.g. din_codes)")
    labels = [m.label for m in models]
    for i, m in enumerate(models):
        if m.compare_to is not None and (m.compare_to not in labels or m.compare_to == m.label):
            raise RecipeError(_unknown(m.compare_to, tuple(x for x in labels if x != m.label),
                                       f"{source}: models[{i}].compare_to (another model's label)"))
    data = _data(raw.get("data"), source)
    checks = tuple(_list(raw, "checks", source, list(CHECKS)))
    for check in checks:
        if check not in CHECKS:
            raise RecipeError(_unknown(check, CHECKS, f"{source}: checks"))
    baseline = raw.get("baseline")
    if baseline is None:
        baseline = default_baseline(names)
    elif baseline not in names:
        raise RecipeError(f"{source}: baseline {baseline!r} is not one of the embeddings {names}"
                          + (f"; did you mean {close[0]!r}?" if (close := difflib.get_close_matches(
                              str(baseline), names, n=1)) else ""))
    return Recipe(name=_name(raw.get("name", Path(source).stem), f"{source}: name"), data=data,
                  seeds=_seeds(raw.get("seeds", [1]), source), encoders=encoders,
                  embeddings=embeddings, models=models, checks=checks,
                  description=str(raw.get("description", "")), source=source, baseline=baseline)


def _check_keys(node: Mapping[str, Any], valid: tuple[str, ...], where: str) -> None:
    if not isinstance(node, Mapping):
        raise RecipeError(f"{where}: expected a mapping with keys {', '.join(valid)}, got {node!r}")
    for key in node:
        if key not in valid:
            raise RecipeError(_unknown(key, valid, where))


def _list(raw: Mapping[str, Any], key: str, source: str, default: list | None = None) -> list:
    value = raw.get(key, default)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecipeError(f"{source}: `{key}` must be a list, got {value!r}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise RecipeError(f"{where}: must be a non-empty name without '/', got {value!r}")
    return value


def _data(raw: Any, source: str) -> DataSpec:
    raw = {"synthetic": "small"} if raw is None else raw
    _check_keys(raw, _DATA_KEYS, f"{source}: data")
    if ("path" in raw) == ("synthetic" in raw):
        raise RecipeError(f"{source}: data needs exactly one of `path` (a dataset folder) or "
                          "`synthetic` (a scale: tiny, demo, small, full)")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RecipeError(f"{source}: data.seed must be an integer >= 0, got {seed!r}")
    if "synthetic" in raw:
        from mmembed.datasets.synthetic import SCALES

        if raw["synthetic"] not in SCALES:
            raise RecipeError(_unknown(raw["synthetic"], tuple(SCALES), f"{source}: data.synthetic"))
        return DataSpec(synthetic=raw["synthetic"], seed=seed)
    return DataSpec(path=str(raw["path"]), seed=seed)


def _seeds(raw: Any, source: str) -> tuple[int, ...]:
    seeds = raw if isinstance(raw, list) else [raw]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise RecipeError(f"{source}: seeds must be a non-empty list of distinct integers, got {raw!r}")
    return tuple(seeds)


def _encoders(raw: Any, source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{source}: `encoders` maps a label to an encoder spec, got {raw!r}")
    out = {}
    for label, spec in raw.items():
        spec = {"name": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise RecipeError(f"{source}: encoders.{label} must be a name or a mapping with `name`, got {spec!r}")
        out[_name(label, f"{source}: encoder label")] = dict(spec)
    return out


def _embedding(raw: Any, index: int, encoders: Mapping[str, Any], source: str) -> EmbeddingSpec:
    where = f"{source}: embeddings[{index}]"
    if isinstance(raw, str):
        if raw not in REFERENCE_TABLES:
            raise RecipeError(_unknown(raw, REFERENCE_TABLES, f"{where} (a table without encoders)"))
        return EmbeddingSpec(name=raw)
    _check_keys(raw, _EMBEDDING_KEYS, where)
    name = _name(raw.get("name"), f"{where}.name")
    codes = raw.get("codes")
    codes = {} if codes is True else codes
    if codes is not None and not isinstance(codes, Mapping):
        raise RecipeError(f"{where}.codes must be true or a mapping of rq parameters (levels, codes, "
                          f"balanced, ...), got {codes!r}")
    codes = None if codes is None else dict(codes)
    if name in REFERENCE_TABLES and set(raw) <= {"name", "codes"}:
        return EmbeddingSpec(name=name, codes=codes)
    used = raw.get("encoders") or []
    if not isinstance(used, list) or not used:
        raise RecipeError(f"{where}: `encoders` must list encoder labels of this recipe "
                          f"({', '.join(encoders) or 'none defined'})")
    for label in used:
        if label not in encoders:
            raise RecipeError(_unknown(label, tuple(encoders), f"{where}.encoders"))
    fusion = raw.get("fusion")
    fusion = {"name": fusion} if isinstance(fusion, str) else fusion
    if fusion is not None and (not isinstance(fusion, Mapping) or "name" not in fusion):
        raise RecipeError(f"{where}.fusion must be a head name or a mapping with `name`, got {fusion!r}")
    dim = raw.get("dim", 128)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise RecipeError(f"{where}.dim must be a positive integer, got {dim!r}")
    return EmbeddingSpec(name=name, encoders=tuple(used), fusion=dict(fusion) if fusion else None, dim=dim,
                         codes=codes)


def _model(raw: Any, index: int, source: str) -> ModelSpec:
    where = f"{source}: models[{index}]"
    raw = {"name": raw} if isinstance(raw, str) else raw
    _check_keys(raw, _MODEL_KEYS, where)
    settings = raw.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise RecipeError(f"{where}.settings must map config keys to values, got {settings!r}")
    for key in ("max_epochs", "train_rows"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RecipeError(f"{where}.{key} must be a positive integer, got {value!r}")
    task1 = raw.get("task1")
    if task1 is not None and not isinstance(task1, bool):
        raise RecipeError(f"{where}.task1 must be true or false, got {task1!r}")
    label = raw.get("label")
    if label is not None:
        label = _name(label, f"{where}.label")
    compare_to = raw.get("compare_to")
    if compare_to is not None:
        compare_to = _name(compare_to, f"{where}.compare_to")
    return ModelSpec(name=_name(raw.get("name", "din"), f"{where}.name"), task1=task1,
                     settings=dict(settings), max_epochs=raw.get("max_epochs"), train_rows=raw.get("train_rows"),
                     given_label=label, compare_to=compare_to)
