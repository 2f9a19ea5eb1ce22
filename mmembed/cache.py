"""On-disk feature cache: sharded, resumable, shared by the processes of a run.

``encode_cached(encoder, catalog)`` returns what ``encoder.encode(catalog)`` would, but
stores it under a key made of the encoder's name, its full config, the identity of its
weights and the catalog's fingerprint. A second call with the same key reads the shards
back without loading the model.

Layout of one entry, ``<cache_dir>/<encoder name>-<key>/``::

    manifest.json                      key parts, N, dim, shard size, encoder info,
                                       "complete" once every shard is there
    shard-<start>-<stop>.npz           vectors (n, dim) float32, valid (n,) bool,
                                       item_ids (n,) int64, info (JSON text)

Every file is written to a temporary name and renamed, so a run killed at any moment
leaves only whole shards; the next run computes just the missing ones. Under
``accelerate launch`` the missing shards are dealt out round robin over the processes
(on a fresh run, shard s goes to process s % world_size), every process writes its own
shards into the shared cache folder, all wait for each other, and every process then
reads the complete result. The cache folder must therefore be visible to all processes
(one machine, or a shared file system across nodes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmembed._distributed import current_process
from ctr_eval.checks import check_positive_int
from ctr_eval.format import atomic_path
from mmembed.encoders.base import EncodedFeatures

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "CacheWriteError",
    "default_cache_dir",
    "encode_cached",
    "feature_key",
    "cache_entry_dir",
]

CACHE_FORMAT = 1
DEFAULT_SHARD_SIZE = 4096
MANIFEST = "manifest.json"
_IDS_SHOWN = 5


class CacheWriteError(OSError):
    """A feature-cache file could not be written (disk full, no permission, ...).

    ``filename`` is the file; ``errno``/``strerror`` say why. Every cache file is written
    to a temporary name and renamed, so the shards already there stay whole and a rerun
    (with space) computes only the missing ones.
    """

    def __str__(self) -> str:
        return f"cannot write feature cache file {self.filename}: {self.strerror}"


def default_cache_dir() -> Path:
    """``$MMEMBED_CACHE`` when set, else ``~/.cache/mmembed/features``."""
    env = os.environ.get("MMEMBED_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mmembed" / "features"


def catalog_fingerprint(catalog: Any) -> str:
    fingerprint = getattr(catalog, "fingerprint", None)
    if not callable(fingerprint):
        raise TypeError(
            f"the feature cache needs a catalog with a fingerprint() method (an "
            f"mmembed.datasets.ItemCatalog), got {type(catalog).__name__}"
        )
    return str(fingerprint())


def feature_key(encoder: Any, catalog: Any, fingerprint: str | None = None) -> tuple[str, dict[str, Any]]:
    """(key, parts): the hex key of (encoder name, config, weights id, catalog).

    ``fingerprint``: the catalog's fingerprint when the caller already has it (it stats
    every image file, so one extraction with several encoders computes it once).
    """
    parts = {
        "format": CACHE_FORMAT,
        "encoder": encoder.name,
        "config": encoder.config(),
        "weights_id": encoder.weights_id(),
        "catalog": catalog_fingerprint(catalog) if fingerprint is None else str(fingerprint),
    }
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24], parts


def cache_entry_dir(encoder: Any, catalog: Any, cache_dir: str | Path | None = None) -> Path:
    """The folder the features of (encoder, catalog) live in."""
    key, _ = feature_key(encoder, catalog)
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / f"{encoder.name}-{key}"


def _shard_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"shard-{start:09d}-{stop:09d}.npz"


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete {folder} to recompute") from None


def _save(path: Path, write: Callable[..., None], *args: Any) -> None:
    """``write(path, *args)``, an OSError on the way re-raised as CacheWriteError naming ``path``."""
    try:
        write(path, *args)
    except OSError as err:
        raise CacheWriteError(err.errno, err.strerror or str(err), str(path)) from err


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))


def _write_shard(path: Path, features: EncodedFeatures, item_ids: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz" to a name
            np.savez(
                handle,
                vectors=features.vectors,
                valid=features.valid,
                item_ids=np.asarray(item_ids, dtype=np.int64),
                info=np.array(json.dumps(features.info, sort_keys=True, default=str)),
            )


def _read_shard(path: Path, expected_ids: np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as data:
            vectors, valid, ids = data["vectors"], data["valid"], data["item_ids"]
            info = json.loads(str(data["info"]))
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cache shard {path} is unreadable ({err}); delete it to recompute") from None
    if not np.array_equal(ids, expected_ids) or (dim is not None and vectors.shape[1] != dim):
        raise ValueError(
            f"cache shard {path} does not match the catalog (item ids or dim differ); "
            f"delete {path.parent} to recompute"
        )
    return vectors, valid, info


def _merge_info(infos: list[dict], valid: np.ndarray, item_ids: np.ndarray) -> dict[str, Any]:
    """One info dict for the whole catalog: counts named ``n_*`` are summed over shards,
    the missing-id examples recomputed, every other key taken from the first shard."""
    merged = dict(infos[0]) if infos else {}
    for key, value in merged.items():
        if key.startswith("n_") and isinstance(value, int) and not isinstance(value, bool):
            merged[key] = sum(int(i.get(key, 0)) for i in infos)
    missing = ~valid
    merged.update(
        n_items=int(len(valid)),
        n_valid=int(valid.sum()),
        n_missing=int(missing.sum()),
        missing_ids_head=[int(i) for i in item_ids[missing][:_IDS_SHOWN]],
    )
    return merged


def encode_cached(
    encoder: Any,
    catalog: Any,
    cache_dir: str | Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int | None = None,
    progress: bool = True,
    num_workers: int | None = None,
    fingerprint: str | None = None,
) -> EncodedFeatures:
    """``encoder.encode(catalog)`` through the on-disk cache (see the module docstring).

    cache_dir: root of the cache (default :func:`default_cache_dir`).
    shard_size: items per shard; a resumed entry keeps the shard size it was started with.
    batch_size, num_workers: passed to ``encoder.encode``.
    fingerprint: ``catalog.fingerprint()`` when already computed (else computed here).
    progress: a progress bar over items, on the main process only.
    Returns EncodedFeatures with ``info["cache"]`` = {dir, key, hit, shards, computed}.
    A cache file that cannot be written raises :class:`CacheWriteError` naming it.
    """
    shard_size = check_positive_int("shard_size", shard_size)
    key, parts = feature_key(encoder, catalog, fingerprint)  # resolves weights and fingerprint: fails early
    if len(catalog) == 0:
        return encoder.encode(catalog, batch_size=batch_size, progress=False, num_workers=num_workers)
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    entry = _open_entry(root / f"{encoder.name}-{key}", key, parts, len(catalog), shard_size)
    missing = [r for r in entry.ranges if not _shard_path(entry.folder, *r).is_file()]
    process = current_process()
    if missing:
        _fill_missing(entry, encoder, catalog, missing, process,
                      batch_size=batch_size, num_workers=num_workers, progress=progress)
    else:
        logger.info("%s: features found in the cache (%s)", encoder.name, entry.folder)
    features = _read_entry(entry, np.asarray(catalog.item_ids, dtype=np.int64))
    features.info["cache"] = {
        "dir": str(entry.folder),
        "key": key,
        "hit": not missing,
        "shards": len(entry.ranges),
        "computed": len(missing),
    }
    if process.is_main:
        _mark_complete(entry, features)
    if not missing and features.info["n_missing"]:
        logger.warning(
            "%s: %d of %d cached items lack the input this encoder needs (valid=False, "
            "zero rows; first item ids: %s)",
            encoder.name, features.info["n_missing"], entry.n_items, features.info["missing_ids_head"],
        )
    return features


@dataclass
class _Entry:
    """One cache entry: its folder, key, size and shard layout, and its manifest if any."""

    folder: Path
    key: str
    parts: dict[str, Any]
    n_items: int
    shard_size: int
    manifest: dict[str, Any] | None

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.shard_size, self.n_items)) for s in range(0, self.n_items, self.shard_size)]


def _open_entry(folder: Path, key: str, parts: dict[str, Any], n_items: int, shard_size: int) -> _Entry:
    """The entry in ``folder``; an existing manifest must match and fixes the shard size."""
    manifest = _read_manifest(folder)
    if manifest is not None:
        if manifest.get("key_parts") != parts or manifest.get("n_items") != n_items:
            raise ValueError(
                f"{folder / MANIFEST} belongs to another encoder config or catalog; "
                f"delete {folder} to recompute"
            )
        if manifest["shard_size"] != shard_size:
            logger.info(
                "cache %s was started with shard_size=%d; keeping it (asked for %d)",
                folder, manifest["shard_size"], shard_size,
            )
            shard_size = int(manifest["shard_size"])
    return _Entry(folder, key, parts, n_items, shard_size, manifest)


def _new_manifest(entry: _Entry, encoder: Any) -> dict[str, Any]:
    return {
        "key": entry.key,
        "key_parts": entry.parts,
        "n_items": entry.n_items,
        "shard_size": entry.shard_size,
        "n_shards": len(entry.ranges),
        "encoder": {
            "name": encoder.name,
            "config": entry.parts["config"],
            "weights_id": entry.parts["weights_id"],
            "untrained": bool(encoder.is_random_init),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": False,
    }


def _fill_missing(
    entry: _Entry,
    encoder: Any,
    catalog: Any,
    missing: list[tuple[int, int]],
    process: Any,
    *,
    batch_size: int | None,
    num_workers: int | None,
    progress: bool,
) -> None:
    """Compute the missing shards, dealt round robin over the processes."""
    if entry.manifest is None and process.is_main:
        entry.manifest = _new_manifest(entry, encoder)
        _save(entry.folder / MANIFEST, _write_json, entry.manifest)
    # One-time image work (a RAR extraction) by the main process alone, then the others;
    # the barrier also makes everyone list the missing shards before anyone writes one.
    prepare = getattr(catalog, "prepare_images", None)
    if process.is_main and callable(prepare):
        prepare()
    process.barrier()
    if not process.is_main and callable(prepare):
        prepare()
    if process.is_main:
        logger.info(
            "%s: computing %d of %d shards into %s%s",
            encoder.name, len(missing), len(entry.ranges), entry.folder,
            f" over {process.world_size} processes" if process.distributed else "",
        )
    mine = missing[process.rank :: process.world_size]
    _compute_shards(encoder, catalog, entry.folder, mine, batch_size, num_workers,
                    progress and process.is_main)
    process.barrier()


def _read_entry(entry: _Entry, item_ids: np.ndarray) -> EncodedFeatures:
    """Every shard of a complete entry, joined, with one info dict for the catalog."""
    vectors, valid, infos = None, np.zeros(entry.n_items, dtype=bool), []
    for start, stop in entry.ranges:
        path = _shard_path(entry.folder, start, stop)
        if not path.is_file():
            raise RuntimeError(f"cache shard {path} is missing after extraction; another process failed?")
        dim = None if vectors is None else vectors.shape[1]
        part, part_valid, info = _read_shard(path, item_ids[start:stop], dim)
        if vectors is None:
            vectors = np.empty((entry.n_items, part.shape[1]), dtype=np.float32)
        vectors[start:stop] = part
        valid[start:stop] = part_valid
        infos.append(info)
    return EncodedFeatures(vectors, valid, _merge_info(infos, valid, item_ids))


def _mark_complete(entry: _Entry, features: EncodedFeatures) -> None:
    manifest = entry.manifest
    if manifest is not None and not manifest.get("complete"):
        manifest.update(complete=True, dim=int(features.vectors.shape[1]), n_valid=features.info["n_valid"])
        _save(entry.folder / MANIFEST, _write_json, manifest)


def _compute_shards(
    encoder: Any,
    catalog: Any,
    folder: Path,
    ranges: list[tuple[int, int]],
    batch_size: int | None,
    num_workers: int | None,
    progress: bool,
) -> None:
    item_ids = np.asarray(catalog.item_ids, dtype=np.int64)
    from ctr_eval.progress import interactive
    from ctr_eval.progress import progress as progress_of

    bar = progress_of(total=sum(stop - start for start, stop in ranges), desc=f"{encoder.name} features",
                      unit="item", enabled=progress)
    try:
        for start, stop in ranges:
            subset = catalog.subset(np.arange(start, stop))
            # within a shard, a bar on a terminal; in a log the shards' lines say enough
            features = encoder.encode(subset, batch_size=batch_size, progress=progress and interactive(),
                                      num_workers=num_workers)
            _save(_shard_path(folder, start, stop), _write_shard, features, item_ids[start:stop])
            bar.update(stop - start)
    finally:
        bar.close()
