"""The Encoder base class and the EncodedFeatures it returns.

An encoder turns an ItemCatalog into one float32 row per item, in catalog order:

* ``__init__(**options)`` stores and checks the options (an unknown option raises
  TypeError naming the valid ones) and resolves the weights at once, so a missing model
  fails before any data is read; the model itself is loaded lazily on the first encode.
* ``encode(catalog)`` returns ``EncodedFeatures(vectors (N, dim) float32, valid (N,) bool,
  info)``. Items without the modality the encoder needs (an empty title for a text
  encoder, a missing or undecodable cover for an image encoder) get ``valid=False`` and a
  row of zeros; they are counted in ``info`` and logged with a WARNING, never silently
  zero.

Subclasses set ``name``, ``modalities`` and ``defaults`` and implement ``dim``,
``weights_id``, ``_load_model`` and ``_encode``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
from abc import ABC, abstractmethod
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import numpy as np

from ctr_eval.checks import check_positive_int

logger = logging.getLogger(__name__)

__all__ = ["Encoder", "EncodedFeatures", "compose_texts", "resolve_device", "MODALITIES"]

MODALITIES = ("text", "image")

# How many missing item ids a log line / info dict shows.
_MISSING_IDS_SHOWN = 5


@dataclass
class EncodedFeatures:
    """Per-item features in catalog order.

    vectors: (N, dim) float32; rows where ``valid`` is False are zeros.
    valid:   (N,) bool; False where the item lacked the modality the encoder needs.
    info:    JSON-able facts about the run (encoder, config, weights id, counts).
    """

    vectors: np.ndarray
    valid: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, np.ndarray) or self.vectors.ndim != 2:
            raise ValueError(
                f"EncodedFeatures.vectors must be a 2-d numpy array (N, dim), got "
                f"{type(self.vectors).__name__} with shape {getattr(self.vectors, 'shape', None)}"
            )
        if self.vectors.dtype != np.float32:
            raise ValueError(f"EncodedFeatures.vectors must be float32, got {self.vectors.dtype}")
        if not isinstance(self.valid, np.ndarray) or self.valid.dtype != np.bool_:
            raise ValueError("EncodedFeatures.valid must be a numpy bool array of shape (N,)")
        if self.valid.shape != (self.vectors.shape[0],):
            raise ValueError(
                f"EncodedFeatures.valid has shape {self.valid.shape}, expected "
                f"({self.vectors.shape[0]},) to match vectors {self.vectors.shape}"
            )

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


class Encoder(ABC):
    """Base class of all encoders; see the module docstring for the contract."""

    #: registry name, e.g. "sbert"
    name: ClassVar[str] = ""
    #: modalities read from the catalog, a subset of ("text", "image")
    modalities: ClassVar[tuple[str, ...]] = ()
    #: options that can change the vectors, with their defaults; part of config()
    defaults: ClassVar[dict[str, Any]] = {}
    #: options that only change where/how fast it runs; not part of config()
    runtime_defaults: ClassVar[dict[str, Any]] = {}
    default_batch_size: ClassVar[int] = 64
    #: False for classical feature extractors that have no learned weights at all
    needs_weights: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        valid_names = set(self.defaults) | set(self.runtime_defaults)
        unknown = sorted(set(options) - valid_names)
        if unknown:
            raise TypeError(
                f"encoder {self.name!r} got unknown option(s) {unknown}; "
                f"valid options: {sorted(valid_names)}"
            )
        merged = copy.deepcopy({**self.defaults, **self.runtime_defaults})
        merged.update(options)
        self.options: dict[str, Any] = merged
        self._model: Any = None
        self._device: str | None = None
        self._check_options()
        try:
            json.dumps(self.config())
        except TypeError as exc:
            raise TypeError(
                f"encoder {self.name!r}: options must be JSON-able (str, number, bool, None, "
                f"list, dict); {exc}"
            ) from None
        self._resolve_weights()

    # ---- hooks for subclasses -------------------------------------------------------
    def _check_options(self) -> None:
        """Validate option values; raise ValueError/TypeError naming the option."""

    def _resolve_weights(self) -> None:
        """Locate the weights (eagerly); raise WeightsNotAvailable when missing."""

    @abstractmethod
    def _load_model(self) -> Any:
        raise NotImplementedError

    @abstractmethod
    def _encode(
        self, catalog: Any, batch_size: int, progress: bool, num_workers: int
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """Return (vectors (N, dim), valid (N,) bool, extra info) for a non-empty catalog."""
        raise NotImplementedError

    def default_num_workers(self) -> int:
        return 0

    def _describe_missing(self, info: dict) -> str:
        """What the invalid items lack, for the WARNING; subclasses name the input and why."""
        return f"the {'+'.join(self.modalities) or 'stored'} input this encoder needs"

    # ---- public API ----------------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def weights_id(self) -> str:
        """Identity of the weights: resolved path + hash, or 'random-init:<seed>'."""
        raise NotImplementedError

    @property
    def is_random_init(self) -> bool:
        return False

    def config(self) -> dict[str, Any]:
        """Every option that can change the vectors (defaults included), JSON-able."""
        cfg = {"name": self.name}
        cfg.update({key: copy.deepcopy(self.options[key]) for key in self.defaults})
        return cfg

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.options.get("device"))
        return self._device

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def load(self) -> "Encoder":
        """Load the model now (encode does this on first use)."""
        if self._model is None:
            with _no_library_bars():
                self._model = self._load_model()
        return self

    def encode(
        self,
        catalog: Any,
        batch_size: int | None = None,
        progress: bool = True,
        num_workers: int | None = None,
    ) -> EncodedFeatures:
        """Encode every item of ``catalog``; rows in catalog order."""
        batch_size = self.default_batch_size if batch_size is None else batch_size
        check_positive_int("batch_size", batch_size)
        num_workers = self.default_num_workers() if num_workers is None else num_workers
        if not _is_int(num_workers):
            raise TypeError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        batch_size, num_workers = int(batch_size), int(num_workers)
        n_items = len(catalog)
        if n_items == 0:
            empty = np.zeros((0, self.dim), dtype=np.float32)
            return EncodedFeatures(empty, np.zeros(0, dtype=bool), self._info(catalog, np.zeros(0, bool), {}))
        self.load()
        vectors, valid, extra = self._encode(catalog, batch_size, progress, num_workers)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        valid = np.asarray(valid, dtype=bool)
        if vectors.shape != (n_items, self.dim) or valid.shape != (n_items,):
            raise RuntimeError(
                f"encoder {self.name!r} produced vectors {vectors.shape} and mask {valid.shape} "
                f"for {n_items} items of dim {self.dim}"
            )
        vectors[~valid] = 0.0
        bad = valid & ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            ids = np.asarray(catalog.item_ids)[bad][:_MISSING_IDS_SHOWN].tolist()
            raise ValueError(
                f"encoder {self.name!r} produced non-finite values (NaN/inf) for {int(bad.sum())} "
                f"items (first item ids: {ids}); check the weights and the dtype option"
            )
        info = self._info(catalog, valid, extra)
        if info["n_missing"]:
            logger.warning(
                "%s: %d of %d items lack %s; their rows are zeros and valid=False "
                "(first item ids: %s)",
                self.name, info["n_missing"], n_items, self._describe_missing(info),
                info["missing_ids_head"],
            )
        return EncodedFeatures(vectors, valid, info)

    def _info(self, catalog: Any, valid: np.ndarray, extra: dict) -> dict:
        missing = ~valid
        ids = np.asarray(catalog.item_ids)[missing][:_MISSING_IDS_SHOWN] if len(valid) else []
        info = {
            "encoder": self.name,
            "config": self.config(),
            "weights_id": self.weights_id(),
            "untrained": self.is_random_init,
            "dim": self.dim,
            "n_items": int(len(valid)),
            "n_valid": int(valid.sum()),
            "n_missing": int(missing.sum()),
            "missing_ids_head": [int(i) for i in ids],
        }
        info.update(extra)
        return info

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({opts})"


# ---- helpers shared by the encoder families -------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_hidden_layer(option_owner: str, layer: int, n_layers: int) -> None:
    """Refuse a hidden-layer index outside -(n+1)..n (0 = embeddings, -1 = last layer)."""
    if not -(n_layers + 1) <= layer <= n_layers:
        raise ValueError(
            f"{option_owner} option layer={layer} is out of range for {n_layers} layers: valid "
            f"are -{n_layers + 1}..{n_layers} (0 = embeddings, -1 = last)"
        )


def resolve_device(device: str | None) -> str:
    """None/'auto' -> 'cuda' when a GPU is usable, else 'cpu'; other strings pass through."""
    if device is not None and not isinstance(device, str):
        raise TypeError(f"device must be a string like 'cpu', 'cuda' or 'cuda:1', got {device!r}")
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def compose_texts(catalog: Any, fields: str) -> list[str]:
    """The text each item is encoded from.

    fields="title": the title; "title+tags": the title followed by the item's non-zero
    tag ids rendered as tokens ("tag_12 tag_40"), so tag identity reaches a text model.
    Missing titles are "" (an item with only tags still gets text under "title+tags").
    """
    titles = [t if isinstance(t, str) else "" for t in catalog.titles]
    if fields == "title":
        return [t.strip() for t in titles]
    if fields != "title+tags":
        raise ValueError(f"fields must be 'title' or 'title+tags', got {fields!r}")
    tags = getattr(catalog, "tags", None)
    if tags is None:
        return [t.strip() for t in titles]
    tags = np.asarray(tags)
    texts = []
    for title, row in zip(titles, tags):
        tokens = " ".join(f"tag_{int(t)}" for t in row if t > 0)
        texts.append(" ".join(part for part in (title.strip(), tokens) if part))
    return texts


def batched_positions(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive chunks of ``order`` of at most ``batch_size`` positions."""
    for start in range(0, len(order), batch_size):
        yield list(order[start : start + batch_size])


@contextlib.contextmanager
def _no_library_bars() -> Iterator[None]:
    """No bars of transformers' own (its weight-loading bar) while a model loads from local
    files: a second's work that would otherwise print a bar into every log."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def progress_bar(iterable: Iterable, total: int | None, desc: str, enabled: bool):
    """Progress over ``iterable`` when ``enabled`` (see :mod:`ctr_eval.progress`)."""
    from ctr_eval.progress import progress

    return progress(iterable, total=total, desc=desc, unit="batch", enabled=enabled)
