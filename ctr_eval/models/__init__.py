"""CTR model registry: ``build_model(name, config, item_table)``, ``list_models()``.

Every model maps a batch dict (item_id, likes_level, views_level, item_seq long; label
ignored) to logits (B,) float. ``model.predict(batch)`` applies the sigmoid;
``model.loss(logits, labels)`` is the training loss; ``model.regularization_loss()``
adds FuxiCTR's embedding/net penalties.

Loss: FuxiCTR puts a Sigmoid at the end of the network and trains with
``F.binary_cross_entropy(y_pred, y_true, reduction="mean")`` (``get_loss
("binary_crossentropy")`` in ``fuxictr.pytorch.torch_utils``). :func:`ctr_loss` does the
same on ``sigmoid(logits)`` in float32 (autocast off: PyTorch refuses BCE on
probabilities under autocast), so saturated predictions behave as in FuxiCTR (log
clamped at -100) rather than as BCE-with-logits would.
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CONFIG_CLASSES, DINConfig, TransActConfig, parse_regularizer
from ..data import ItemTable
from ..layers import norm_penalty

__all__ = ["build_model", "list_models", "register_model", "ctr_loss", "CTRModel"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class decorator adding a model under ``name``."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def ctr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(logits), computed as FuxiCTR does."""
    device_type = logits.device.type if logits.device.type in ("cuda", "cpu", "xpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        probs = torch.sigmoid(logits.float().reshape(-1))
        return F.binary_cross_entropy(probs, labels.float().reshape(-1), reduction="mean")


class CTRModel(nn.Module):
    """Shared behaviour: predict, loss, regularization with FuxiCTR's parameter split."""

    config: DINConfig | TransActConfig

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch).float())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ctr_loss(logits, labels)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The parameters FuxiCTR counts as embeddings (those inside its
        FeatureEmbeddingDict): every nn.Embedding plus the item_emb_d128 projection."""
        raise NotImplementedError

    def regularization_loss(self) -> torch.Tensor:
        """FuxiCTR ``BaseModel.regularization_loss``: embedding_regularizer on the
        embedding parameters, net_regularizer on all others, (lambda/p) ||w||_p^p."""
        emb_params = self.embedding_parameters()
        emb_ids = {id(p) for p in emb_params}
        net_params = [p for p in self.parameters() if id(p) not in emb_ids]
        total = torch.zeros((), device=emb_params[0].device)
        for params, reg in ((emb_params, self.config.embedding_regularizer),
                            (net_params, self.config.net_regularizer)):
            term = norm_penalty(params, parse_regularizer(reg))
            if term is not None:
                total = total + term
        return total


def build_model(name: str, config=None, item_table: ItemTable | None = None, **kwargs) -> nn.Module:
    """Instantiate model ``name`` from its config (default config when None)."""
    if name not in _REGISTRY:
        near = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown model {name!r}; known models: {list_models()}{hint}")
    expected = CONFIG_CLASSES[name]
    if config is None:
        config = expected()
    if not isinstance(config, expected):
        raise TypeError(f"model {name!r} needs a {expected.__name__}, got {type(config).__name__}")
    if not isinstance(item_table, ItemTable):
        raise TypeError(f"item_table must be an ItemTable (see ctr_eval.data.load_item_table), "
                        f"got {type(item_table).__name__}")
    return _REGISTRY[name](config, item_table, **kwargs)


# Register the built-in models (imported for their decorators).
from . import din as _din  # noqa: E402,F401
from . import transact_dcn as _transact_dcn  # noqa: E402,F401
