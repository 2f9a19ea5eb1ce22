"""Any BERT-style checkpoint through transformers' AutoModel, with cls or mean pooling.

The default ``bert-base-uncased`` matches the challenge's ``txt_emb_BERT`` features
(768-d). ``layer`` picks a hidden layer (-1 = last). Mean pooling excludes padding via
the attention mask. Items with an empty text get valid=False.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..weights import ResolvedWeights, resolve_model
from . import register_encoder
from .base import Encoder, batched_positions, check_hidden_layer, compose_texts, progress_bar

logger = logging.getLogger(__name__)


@register_encoder("bert")
class BertEncoder(Encoder):
    """transformers AutoModel text embeddings (cls or masked-mean pooling, any layer)."""

    modalities = ("text",)
    defaults = {
        "model": "bert-base-uncased",
        "revision": None,
        "fields": "title",          # "title" | "title+tags"
        "pooling": "cls",           # "cls" | "mean"
        "layer": -1,                # index into hidden_states; -1 = last layer
        "normalize": False,
        "max_length": 128,          # tokens; titles are short
    }
    runtime_defaults = {"device": None, "local_files_only": None}
    default_batch_size = 64

    def _check_options(self) -> None:
        opts = self.options
        if opts["fields"] not in ("title", "title+tags"):
            raise ValueError(f"bert option fields must be 'title' or 'title+tags', got {opts['fields']!r}")
        if opts["pooling"] not in ("cls", "mean"):
            raise ValueError(f"bert option pooling must be 'cls' or 'mean', got {opts['pooling']!r}")
        if isinstance(opts["layer"], bool) or not isinstance(opts["layer"], int):
            raise TypeError(f"bert option layer must be an int (e.g. -1 for the last layer), got {opts['layer']!r}")
        if not isinstance(opts["normalize"], bool):
            raise TypeError(f"bert option normalize must be a bool, got {opts['normalize']!r}")
        ml = opts["max_length"]
        if isinstance(ml, bool) or not isinstance(ml, int):
            raise TypeError(f"bert option max_length must be an int >= 2, got {ml!r}")
        if ml < 2:
            raise ValueError(f"bert option max_length must be an int >= 2, got {ml!r}")

    def _resolve_weights(self) -> None:
        self._weights: ResolvedWeights = resolve_model(
            self.options["model"],
            revision=self.options["revision"],
            local_files_only=self.options["local_files_only"],
        )
        self._config = _load_config(self._weights)
        n_layers = int(getattr(self._config, "num_hidden_layers", 0) or 0)
        if n_layers:
            check_hidden_layer(f"bert ({self.options['model']!r})", self.options["layer"], n_layers)

    def weights_id(self) -> str:
        return self._weights.identity()

    @property
    def dim(self) -> int:
        return int(self._config.hidden_size)

    def _load_model(self) -> Any:
        from transformers import AutoModel, AutoTokenizer

        logger.info("loading %s from %s", self.options["model"], self._weights.path)
        tokenizer = AutoTokenizer.from_pretrained(str(self._weights.path), local_files_only=True)
        model, loading = AutoModel.from_pretrained(
            str(self._weights.path), local_files_only=True, output_loading_info=True,
        )
        # The pooler head is never used here; anything else missing means random weights.
        missing = [k for k in loading.get("missing_keys") or [] if not k.startswith("pooler.")]
        if missing:
            raise ValueError(
                f"bert model {self.options['model']!r} at {self._weights.path}: {len(missing)} weights "
                f"missing from the checkpoint (first: {missing[:3]}); refusing to run half-random"
            )
        model.to(self.device).eval()
        return tokenizer, model

    def _encode(self, catalog, batch_size, progress, num_workers):
        import torch

        tokenizer, model = self._model
        texts = compose_texts(catalog, self.options["fields"])
        valid = np.array([bool(t) for t in texts], dtype=bool)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        present = np.flatnonzero(valid)
        # Longest first so each batch pads little; rows go back to catalog order below.
        order = sorted(present.tolist(), key=lambda i: -len(texts[i]))
        batches = list(batched_positions(order, batch_size))
        with torch.inference_mode():
            for positions in progress_bar(batches, len(batches), "bert", progress):
                enc = tokenizer(
                    [texts[i] for i in positions], padding=True, truncation=True,
                    max_length=self.options["max_length"], return_tensors="pt",
                ).to(self.device)
                out = model(**enc, output_hidden_states=self.options["layer"] != -1)
                hidden = out.last_hidden_state if self.options["layer"] == -1 else out.hidden_states[self.options["layer"]]
                pooled = _pool(hidden, enc["attention_mask"], self.options["pooling"])
                if self.options["normalize"]:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors[positions] = pooled.float().cpu().numpy()
        return vectors, valid, {}


def _pool(hidden, mask, pooling: str):
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _load_config(weights: ResolvedWeights):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(weights.path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"model {weights.model!r} at {weights.path} has no usable transformers config.json: {exc}"
        ) from None
