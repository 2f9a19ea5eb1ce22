"""``mmembed.extract``: items in, one fused vector per item out, with its provenance.

    emb = mmembed.extract("data/", encoders=["sbert", "clip"], fusion="concat_pca", dim=128)
    emb.save("runs/emb")                      # embeddings.npz + provenance.json
    emb.save_item_info("runs/item_info.parquet")   # the challenge's file, validated
                                                   # (+ item_codes.parquet for a head with codes)

Each encoder runs through the feature cache (:mod:`mmembed.cache`), so repeating a call,
or changing only the fusion, never runs a model twice. Under ``accelerate launch`` the
encoding is sharded over the processes; every process returns the same result.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ctr_eval.checks import check_positive_int
from ctr_eval.format import atomic_path
from ctr_eval.format import ITEM_CODES_FILE
from mmembed.item_info import tags_from, check_item_info, write_item_codes, write_item_info  # noqa: F401
from mmembed.specs import format_spec, parse_spec  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

__all__ = [
    "ItemEmbeddings", "build_head", "check_item_info", "check_widths", "extract", "format_spec",
    "parse_spec", "write_item_info",
]

EMBEDDINGS_FILE = "embeddings.npz"
PROVENANCE_FILE = "provenance.json"
_MAP_ROWS = 1 << 16  # history rows mapped to catalog rows at once


@dataclass
class ItemEmbeddings:
    """Fused item vectors and where they came from.

    ids: (N,) int64 item ids; vectors: (N, dim) float32, row i = item ids[i];
    valid: {encoder label: (N,) bool} (False = that encoder lacked the item's input);
    tags: (N, 5) int64 tags from the catalog (used by save_item_info without a source);
    provenance: JSON-able record of encoders (configs, weights ids, random-init flags),
    fusion (with its diagnostics), data fingerprint, mmembed version and creation time;
    source_dir: the dataset root the items came from, if any;
    codes: (N, levels) int64 semantic IDs, row i = item ids[i], from a fusion head that
    makes them (``rq``), else None.
    """

    ids: np.ndarray
    vectors: np.ndarray
    provenance: dict[str, Any]
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    tags: np.ndarray | None = None
    source_dir: Path | None = None
    codes: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.ids))

    def __repr__(self) -> str:  # a summary: the dataclass's would print every array
        encoders = self.provenance.get("encoders") or []
        parts = [f"{len(self)} items x {self.vectors.shape[1] if self.vectors.ndim == 2 else '?'}"]
        if encoders:
            parts.append("encoders " + ", ".join(
                e.get("label", e.get("name", "?")) + (" (RANDOM weights)" if e.get("untrained") else "")
                for e in encoders))
        fusion = self.provenance.get("fusion")
        parts.append(f"fusion {fusion['name']}" if fusion else "no fusion")
        if self.codes is not None:
            parts.append(f"codes {self.codes.shape[1]} levels")
        if self.source_dir is not None:
            parts.append(f"from {self.source_dir}")
        return f"ItemEmbeddings({'; '.join(parts)})"

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def untrained(self) -> bool:
        """True when any encoder ran with random (untrained) weights."""
        return bool(self.provenance.get("untrained", False))

    # -- save / load ---------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``embeddings.npz`` and ``provenance.json`` into ``directory``, atomically."""
        directory = Path(directory)
        names = list(self.valid)
        arrays = {
            "ids": np.asarray(self.ids, dtype=np.int64),
            "vectors": np.asarray(self.vectors, dtype=np.float32),
            "valid": np.stack([self.valid[n] for n in names]) if names else np.zeros((0, len(self)), bool),
            "valid_names": np.array(names, dtype=str),
            "provenance": np.array(json.dumps(self.provenance, sort_keys=True)),
            "source_dir": np.array("" if self.source_dir is None else str(self.source_dir)),
        }
        if self.tags is not None:
            arrays["tags"] = np.asarray(self.tags, dtype=np.int64)
        if self.codes is not None:
            arrays["codes"] = np.asarray(self.codes, dtype=np.int64)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / EMBEDDINGS_FILE) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        # A readable copy; load() trusts the one inside the npz.
        with atomic_path(directory / PROVENANCE_FILE) as tmp:
            tmp.write_text(json.dumps(self.provenance, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ItemEmbeddings":
        path = Path(directory) / EMBEDDINGS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: expected a folder written by ItemEmbeddings.save")
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["valid_names"]]
            source = str(data["source_dir"])
            return cls(
                ids=data["ids"],
                vectors=data["vectors"],
                provenance=json.loads(str(data["provenance"])),
                valid={n: data["valid"][i] for i, n in enumerate(names)},
                tags=data["tags"] if "tags" in data.files else None,
                source_dir=Path(source) if source else None,
                codes=data["codes"] if "codes" in data.files else None,
            )

    # -- the challenge's item_info.parquet -------------------------------------------------
    def save_item_info(self, path: str | os.PathLike, like: str | os.PathLike | None = None) -> Path:
        """Write a challenge-format ``item_info.parquet``: row i = item i, row 0 zeros.

        Columns: item_id int64, item_tags list<int64> (5), item_emb_d128 list<float32> (128).
        Tags come from ``like`` (an item_info.parquet, or a dataset dir holding one);
        default: the item_info.parquet of the dataset these items came from when it has
        one, else the catalog's own tags (from item_feature.parquet or the records).
        The ids must be exactly 1..N (in any order) and the vectors 128-d. The written
        file is read back and checked before this returns. When the items have semantic-ID
        ``codes``, ``item_codes.parquet`` is written beside it (same folder, row i = item
        i, row 0 -1), where ``ctr_eval`` looks for them.
        """
        if self.untrained:
            logger.warning(
                "writing %s from UNTRAINED (random-init) encoder weights: %s; the vectors "
                "carry no learned meaning",
                path, [e["label"] for e in self.provenance.get("encoders", []) if e.get("untrained")],
            )
        if like is None and self.source_dir is not None:
            from mmembed.datasets import find_layout

            source_info = find_layout(self.source_dir).item_info
            like = source_info if source_info.is_file() else None
        tags = tags_from(like, len(self)) if like is not None else None
        written = write_item_info(path, self.ids, self.vectors, tags if tags is not None else self.tags)
        if self.codes is not None:
            write_item_codes(Path(path).parent / ITEM_CODES_FILE, self.ids, self.codes)
        return written


def extract(
    data: Any,
    encoders: str | Sequence[Any] = ("sbert", "clip"),
    fusion: str | Mapping[str, Any] | Any | None = "concat_pca",
    dim: int | None = 128,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    shard_size: int = 4096,
    sequences: Any = None,
    images: Any = "auto",
) -> ItemEmbeddings:
    """Encode every item with each encoder (cached) and fuse to ``dim``-d vectors.

    data: a dataset directory (ROOT or ROOT/MicroLens_1M_x1), an ItemCatalog, or a list
        of dicts with "title", optional "tags", "image", "item_id".
    encoders: names, ``{"name": ..., **options}`` dicts or Encoder instances.
    fusion: a fusion head name, a ``{"name": ..., **params}`` dict, a FusionHead, or None
        (the encoders' features concatenated as they are; ``dim`` must then be None or
        their total width).
    dim: output width (a positive integer), passed to the fusion head; None lets the
        head (or the spec's own "dim") decide.
    cache_dir: feature cache root (default ``$MMEMBED_CACHE`` or ~/.cache/mmembed/features).
    batch_size, num_workers: passed to each encoder (num_workers: DataLoader workers).
    progress: progress bars, main process only.
    shard_size: items per cache shard (the default is ``mmembed.cache.DEFAULT_SHARD_SIZE``).
    sequences: histories for fusion heads that learn from them (``uses_sequences``): an
        (n, L) int array, left zero-padded, k > 0 = the catalog's item row k - 1. None (the
        default) reads the train histories of the dataset folder the items come from
        (train.parquet's item_seq and item_seq.parquet, each history once; valid and test
        are never read); items from records have none, so such a head then needs them.
    images: "auto", None or a path to the covers; dataset directories only.

    Everything that bad input can break (encoder specs and weights, fusion, dim, the
    data) is checked before any model runs.
    """
    from ctr_eval.progress import quiet

    with quiet(not progress):  # the fusion head's training obeys ``progress`` too
        return _extract(data, encoders, fusion, dim, images, sequences, cache_dir, shard_size, batch_size,
                        num_workers, progress)


def _extract(data: Any, encoders: Any, fusion: Any, dim: int | None, images: Any, sequences: Any,
             cache_dir: Any, shard_size: int, batch_size: int, num_workers: int, progress: bool) -> ItemEmbeddings:
    built, labels, head = _build_models(encoders, fusion, dim)
    catalog, source_dir, source = _as_catalog(data, images, progress)
    sequences, sequence_record = _head_sequences(head, sequences, catalog, source_dir, source, progress)

    fingerprint = catalog.fingerprint()  # stats every image file: once, not per encoder
    features = _encode_all(
        built, labels, catalog, fingerprint,
        cache_dir=cache_dir, shard_size=shard_size, batch_size=batch_size,
        num_workers=num_workers, progress=progress,
    )
    codes = None
    if head is None:
        vectors = np.concatenate([f.vectors for f in features.values()], axis=1)
    else:
        vectors = head.fit_transform(features, sequences)
        if head.makes_codes:
            codes = np.asarray(head.codes_, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    data_record = {"source": source, "fingerprint": fingerprint, "n_items": len(catalog)}
    return ItemEmbeddings(
        ids=np.asarray(catalog.item_ids, dtype=np.int64).copy(),
        vectors=vectors,
        provenance=_provenance(built, labels, features, head, vectors, data_record, sequence_record),
        valid={label: f.valid for label, f in features.items()},
        tags=np.asarray(catalog.tags, dtype=np.int64).copy(),
        source_dir=source_dir,
        codes=codes,
    )


def _build_models(encoders: Any, fusion: Any, dim: int | None) -> tuple[list[Any], list[str], Any]:
    """(encoders, their labels, fusion head or None), every width rule checked."""
    from mmembed.encoders import Encoder, create_encoder

    check_positive_int("dim", dim, allow_none=True)
    specs = [encoders] if isinstance(encoders, (str, Mapping, Encoder)) else list(encoders)
    built = [create_encoder(spec) for spec in specs]
    if not built:
        raise ValueError("extract() needs at least one encoder")
    head = build_head(fusion, dim)
    labels = encoder_labels([e.name for e in built])
    check_widths(head, dict(zip(labels, (e.dim for e in built))), dim)
    return built, labels, head


def check_widths(head: Any, widths: Mapping[str, int], dim: int | None) -> None:
    """Refuse, before any model runs, a width the fusion cannot give from these features
    ({encoder label: width})."""
    total = int(sum(widths.values()))
    if head is None and dim is not None and total != dim:
        raise ValueError(
            f"fusion=None keeps the encoders' features as they are ({total} "
            f"dims in all), but dim={dim}; pass dim=None or choose a fusion head"
        )
    if head is not None:
        head.check_input_widths(widths)


def _head_sequences(head: Any, sequences: Any, catalog: Any, source_dir: Path | None,
                    source: str, progress: bool = False) -> tuple[Any, dict[str, Any] | None]:
    """(the sequences the fusion head is fitted with, a provenance record of them).

    A head that learns from histories gets ``sequences`` when given, else the train
    histories of ``source_dir`` mapped to catalog rows; read here, before any encoder runs,
    so that a missing or broken file stops the run early.
    """
    if head is None or not head.uses_sequences:
        return sequences, None
    if sequences is not None:
        return sequences, {"source": "given", "n_histories": int(len(sequences))}
    if source_dir is None:
        raise ValueError(
            f"fusion {head.name!r} learns from train histories, but the items come from {source}, "
            "which has none: pass a dataset folder (its train.parquet and item_seq.parquet are "
            "read) or sequences=(n, L) rows of the catalog")
    from mmembed.datasets.histories import HEAD_MAX_HISTORIES, load_train_histories

    histories = load_train_histories(source_dir, max_histories=HEAD_MAX_HISTORIES, progress=progress)
    rows = history_rows(histories.item_seq, catalog.item_ids)
    return rows, {"source": [str(p) for p in histories.sources], "rows_read": histories.rows_read,
                  "distinct": histories.distinct, "n_histories": int(len(rows))}


def history_rows(item_seq: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Histories of item ids as histories of catalog rows: id -> 1 + its row in
    ``item_ids`` (0 stays padding). Ids the catalog lacks become 0 too, with a warning.
    int32 when the catalog's rows fit (they do below 2**31 items), mapped in chunks."""
    ids = np.asarray(item_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    out = np.zeros(item_seq.shape, np.int32 if len(ids) < np.iinfo(np.int32).max else np.int64)
    unknown_ids, n_unknown = [], 0
    for start in range(0, len(item_seq), _MAP_ROWS):
        chunk = np.asarray(item_seq[start: start + _MAP_ROWS], dtype=np.int64)
        where = np.clip(np.searchsorted(sorted_ids, chunk), 0, max(len(ids) - 1, 0))
        found = (chunk != 0) & (sorted_ids[where] == chunk) if len(ids) else np.zeros(chunk.shape, bool)
        out[start: start + len(chunk)] = np.where(found, order[where] + 1, 0)
        unknown = (chunk != 0) & ~found
        if unknown.any():
            n_unknown += int(unknown.sum())
            unknown_ids.append(np.unique(chunk[unknown]))
    if n_unknown:
        distinct = np.unique(np.concatenate(unknown_ids))
        logger.warning("train histories: %d click(s) on %d item id(s) absent from the catalog "
                       "(e.g. %s) are left out", n_unknown, len(distinct), distinct[:5].tolist())
    return out


def _encode_all(built: list[Any], labels: list[str], catalog: Any, fingerprint: str,
                **options: Any) -> dict[str, Any]:
    """{label: EncodedFeatures}, each through the feature cache (``options``: encode_cached's)."""
    from mmembed.cache import encode_cached

    return {
        label: encode_cached(encoder, catalog, fingerprint=fingerprint, **options)
        for label, encoder in zip(labels, built)
    }


def _provenance(built: list[Any], labels: list[str], features: dict[str, Any], head: Any,
                vectors: np.ndarray, data_record: dict[str, Any],
                sequence_record: dict[str, Any] | None = None) -> dict[str, Any]:
    from mmembed import __version__

    encoder_records = [_encoder_record(label, e, features[label]) for label, e in zip(labels, built)]
    untrained = [r["label"] for r in encoder_records if r["untrained"]]
    if untrained:
        logger.warning("extract: encoder(s) %s ran with RANDOM (untrained) weights", untrained)
    return {
        "mmembed_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data_record,
        "encoders": encoder_records,
        "fusion": None if head is None else {
            "name": head.name,
            "params": head.get_params(),
            "n_fit_items": getattr(head, "n_fit_items_", None),
            "diagnostics": head.diagnostics(),
            **({"sequences": sequence_record} if sequence_record else {}),
        },
        "dim": int(vectors.shape[1]),
        "untrained": bool(untrained),
    }


def _encoder_record(label: str, encoder: Any, features: Any) -> dict[str, Any]:
    return {
        "label": label,
        "name": encoder.name,
        "config": encoder.config(),
        "weights_id": encoder.weights_id(),
        "untrained": bool(encoder.is_random_init),
        "dim": int(features.vectors.shape[1]),
        "n_valid": int(features.valid.sum()),
        "n_missing": int((~features.valid).sum()),
        "cache_dir": features.info.get("cache", {}).get("dir"),
    }


def encoder_labels(names: list[str]) -> list[str]:
    """Encoder names, made unique ("sbert", "sbert:2") when one is used twice."""
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}:{seen[name]}")
    return labels


def build_head(fusion: Any, dim: int | None) -> Any:
    """A FusionHead from a name, a dict spec or an instance (None stays None), of width ``dim``."""
    if fusion is None:
        return None
    from mmembed.fusion import FusionHead, create_fusion

    if isinstance(fusion, FusionHead):
        head_dim = getattr(fusion, "dim", dim)
        if dim is not None and head_dim != dim:
            raise ValueError(f"the fusion head has dim={head_dim} but extract() got dim={dim}")
        return fusion
    if isinstance(fusion, Mapping):
        spec = dict(fusion)
        if dim is not None and spec.setdefault("dim", dim) != dim:
            raise ValueError(f"fusion spec says dim={spec['dim']} but extract() got dim={dim}")
        return create_fusion(spec)
    if isinstance(fusion, str):
        return create_fusion(fusion) if dim is None else create_fusion(fusion, dim=dim)
    raise TypeError(f"fusion must be a name, a dict, a FusionHead or None, got {type(fusion).__name__}")


def _as_catalog(data: Any, images: Any, progress: bool) -> tuple[Any, Path | None, str]:
    """(catalog, dataset root or None, a short description of the source)."""
    from mmembed.datasets import ItemCatalog, find_layout

    if isinstance(data, (str, os.PathLike)):
        root = find_layout(data).root
        return ItemCatalog.from_dir(data, images=images, progress=progress), root, str(root)
    if images != "auto":
        raise ValueError("the images option applies only when data is a dataset directory")
    if isinstance(data, ItemCatalog):
        # from_dir catalogs record their dataset root in .source ("records"/"memory" else)
        root = Path(data.source) if Path(data.source).is_dir() else None
        return data, root, str(data.source)
    if isinstance(data, Sequence) and data and all(isinstance(r, Mapping) for r in data):
        return ItemCatalog.from_records(list(data)), None, f"records ({len(data)})"
    raise TypeError(
        "data must be a dataset directory (str or Path), an ItemCatalog, or a non-empty list "
        f"of dicts with 'title' (and optional 'tags', 'image', 'item_id'); got {type(data).__name__}"
    )
