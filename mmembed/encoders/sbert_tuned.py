"""``sbert_tuned``: the sbert text encoder with its top layers fine-tuned on train histories.

The features of a fusion head can only hold what the encoder put in them; this encoder
puts more of what co-clicks share into the text vectors themselves. Before it encodes,
it fine-tunes the top ``train_layers`` transformer layers of the sentence-transformers
model (the others stay frozen) so that titles of items clicked close together in a train
history meet: each step draws ``pairs_per_step`` (query, key) pairs of items at most
``window`` positions apart in a history (the same sampler as the trained fusion heads),
mean-pools the titles' token states and minimises InfoNCE over the step's keys
(cosine / ``temperature``, keys of the query's own item masked). Titles are cut to
``max_tokens`` tokens. Only ``MicroLens_1M_x1/train.parquet``'s ``item_seq`` and
``item_seq.parquet`` are read (valid and test never), from the dataset at ``data`` (in a
recipe, ``"{data}"``: the recipe's own data).

The fine-tuned vectors are cached like any encoder's: the cache key holds every option
(training settings and seed included) and the weights id holds the base model's identity
and a fingerprint of the history files, so other histories or settings give other
features, and a repeated run reuses them without training. Training is seeded and runs
on one process (CPU: bit-reproducible for a seed on one machine).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ctr_eval.checks import check_positive_int
from . import register_encoder
from .base import compose_texts
from .sbert import SBertEncoder

logger = logging.getLogger(__name__)


@register_encoder("sbert_tuned")
class TunedSBertEncoder(SBertEncoder):
    """sbert with its top layers fine-tuned on train-history co-clicks (InfoNCE)."""

    defaults = {
        **SBertEncoder.defaults,
        "data": None,              # the dataset whose train histories it learns from
        "train_layers": 1,         # top transformer layers trained; the rest stay frozen
        "steps": 300,
        "pairs_per_step": 64,
        "learning_rate": 5e-5,
        "temperature": 0.05,
        "window": 8,
        "max_tokens": 16,
        "seed": 0,
    }

    def _check_options(self) -> None:
        super()._check_options()
        data = self.options["data"]
        if not isinstance(data, str) or not data:
            raise TypeError("sbert_tuned needs option data: the dataset folder whose train histories it "
                            "learns from (in a recipe: \"{data}\")")
        for name in ("train_layers", "steps", "pairs_per_step", "window", "max_tokens"):
            check_positive_int(f"sbert_tuned option {name}", self.options[name])
        for name in ("learning_rate", "temperature"):
            value = self.options[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sbert_tuned option {name} must be a number > 0, got {value!r}")
        if not isinstance(self.options["seed"], int) or isinstance(self.options["seed"], bool):
            raise TypeError(f"sbert_tuned option seed must be an integer, got {self.options['seed']!r}")

    def _resolve_weights(self) -> None:
        from mmembed.datasets import find_layout
        from mmembed.datasets.histories import histories_fingerprint

        super()._resolve_weights()
        self._root = find_layout(Path(self.options["data"]).expanduser()).root
        self._histories = histories_fingerprint(self._root)

    def weights_id(self) -> str:
        return f"{super().weights_id()}+tuned-on:{self._histories}"

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["data"] = str(self._root) if hasattr(self, "_root") else cfg["data"]  # where, not how it is spelt
        return cfg

    def _load_model(self) -> Any:
        model = super()._load_model()
        self.history_ = _fine_tune(model, self._root, self.options, self.options["fields"])
        model.eval()
        return model


def _fine_tune(model: Any, root: Path, options: dict[str, Any], fields: str) -> list[float]:
    """Train the top layers of ``model`` (a SentenceTransformer) in place; the mean
    InfoNCE loss of each tenth of the steps."""
    import torch

    from mmembed.api import history_rows
    from mmembed.datasets import ItemCatalog
    from mmembed.datasets.histories import HEAD_MAX_HISTORIES, load_train_histories
    from mmembed.fusion._pairs import WindowSampler

    catalog = ItemCatalog.from_dir(root, images=None)
    texts = compose_texts(catalog, fields)
    histories = load_train_histories(root, max_histories=HEAD_MAX_HISTORIES)
    sampler = WindowSampler(history_rows(histories.item_seq, catalog.item_ids), options["window"], options["seed"])
    transformer = model[0].auto_model
    layers = transformer.encoder.layer
    trained = list(layers[len(layers) - min(options["train_layers"], len(layers)):])
    for p in transformer.parameters():
        p.requires_grad_(False)
    params = [p for layer in trained for p in layer.parameters()]
    for p in params:
        p.requires_grad_(True)
    tokens = model.tokenizer(texts, max_length=options["max_tokens"], truncation=True, padding="max_length",
                             return_tensors="pt")
    torch.manual_seed(options["seed"])
    optimizer = torch.optim.AdamW(params, lr=options["learning_rate"], weight_decay=0.0)
    transformer.train()
    losses, pass_, pairs = [], 0, np.zeros((0, 2), np.int64)
    for step in range(options["steps"]):
        if len(pairs) < options["pairs_per_step"]:
            drawn = sampler(pass_)
            pass_ += 1
            if not len(drawn):
                raise ValueError(f"sbert_tuned: the train histories of {root} give no pairs of items "
                                 f"within {options['window']} positions")
            pairs = drawn[np.random.default_rng([options["seed"], pass_]).permutation(len(drawn))]
        batch, pairs = pairs[:options["pairs_per_step"]], pairs[options["pairs_per_step"]:]
        loss = _info_nce(transformer, tokens, torch.from_numpy(batch.astype(np.int64)), options["temperature"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    for p in transformer.parameters():
        p.requires_grad_(False)
    tenth = max(1, len(losses) // 10)
    history = [float(np.mean(losses[i: i + tenth])) for i in range(0, len(losses), tenth)]
    logger.info("sbert_tuned: %d steps of %d pairs on the train histories of %s, %d layer(s) trained; "
                "InfoNCE %.3f -> %.3f", options["steps"], options["pairs_per_step"], root, len(trained),
                history[0], history[-1])
    return history


def _info_nce(transformer: Any, tokens: Any, pairs: Any, temperature: float) -> Any:
    """InfoNCE of the queries against the step's keys; a key of the query's own item is
    masked (its positive excepted)."""
    import torch
    import torch.nn.functional as F

    items, index = torch.unique(pairs.reshape(-1), return_inverse=True)
    ids, mask = tokens["input_ids"][items], tokens["attention_mask"][items]
    width = int(mask.sum(dim=1).max())  # padding beyond the longest title does nothing
    states = transformer(input_ids=ids[:, :width], attention_mask=mask[:, :width]).last_hidden_state
    weights = mask[:, :width].unsqueeze(-1).to(states.dtype)
    pooled = F.normalize((states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1), dim=1)
    queries, keys = index.view(-1, 2)[:, 0], index.view(-1, 2)[:, 1]
    logits = pooled[queries] @ pooled[keys].T / temperature
    same = (keys.unsqueeze(0) == queries.unsqueeze(1)) | (keys.unsqueeze(0) == keys.unsqueeze(1))
    same.fill_diagonal_(False)
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(queries)))
