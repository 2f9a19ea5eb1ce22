"""CTR model registry: ``build_model(name, config, item_table)``, ``list_models()``.

A model is one file: its config (a frozen dataclass extending
:class:`ctr_eval.config.TrainingConfig`, limits declared on its fields) and its module,
registered with ``@register_model("din", config_class=DINConfig)``, plus one import line
at the bottom of this file. The registration is the one place its name lives: :func:`ctr_eval.config.resolve_config` and the
trainer find the config class and the model name through :data:`MODELS`.

Every model maps a batch dict (item_id, likes_level, views_level, item_seq long; user_id
when the split has it; label ignored) to logits (B,) float. ``model.predict(batch)`` applies the sigmoid;
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

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainingConfig, parse_regularizer
from ..data import ItemTable
from ..layers import ItemEmbedding, batch_unique, fuxictr_reset_linear, norm_penalty
from ..registry import Registry

__all__ = ["MODELS", "build_model", "config_class", "list_models", "model_name_of",
           "register_model", "ctr_loss", "CTRModel"]


def ctr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of sigmoid(logits), computed as FuxiCTR does."""
    device_type = logits.device.type if logits.device.type in ("cuda", "cpu", "xpu") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        probs = torch.sigmoid(logits.float().reshape(-1))
        return F.binary_cross_entropy(probs, labels.float().reshape(-1), reduction="mean")


class CTRModel(nn.Module):
    """Base of the registered CTR models. Shared parts: the item encoder and level embeddings both models build the same
    way (FuxiCTR's FeatureEmbeddingDict over the challenge's features), FuxiCTR's init,
    its regularization split, predict and loss."""

    #: set by ``register_model(name, config_class=...)``
    name: str = ""
    config_class: type = type(None)
    #: config overrides (Task 2 mode) that make the model tiny for the contract tests
    #: (tests/test_ctr_models.py); every registered model must set it
    tiny_config: dict | None = None
    config: TrainingConfig

    def _build_embeddings(self, config, item_table: ItemTable) -> None:
        """The item encoder and the row's context embeddings (likes, views, and in Task 2
        mode the user); ``self.context_dim`` is their total width."""
        if item_table.emb.shape[1] != config.pretrained_dim:
            raise ValueError(f"item embeddings are {item_table.emb.shape[1]}-d; the model expects "
                             f"{config.pretrained_dim}")
        for name, present in (("item_codes", item_table.codes is not None),
                              ("item_levels", item_table.levels is not None),
                              ("user_id", item_table.user_rows > 0)):
            if getattr(config, name) != present:
                raise ValueError(f"config {name}={getattr(config, name)} but the item table "
                                 f"{'has' if present else 'lacks'} that feature: build the table with "
                                 "ctr_eval.data.add_task2_features(table, data_dir, config, ...)")
        d = config.embedding_dim
        self.items = ItemEmbedding(item_table.tags, item_table.emb, d, codes=item_table.codes,
                                   levels=item_table.levels, num_levels=config.num_levels)
        # likes/views level 0 hits padding_idx 0: a fixed zero vector, as in FuxiCTR
        self.likes_embedding = nn.Embedding(config.num_levels, d, padding_idx=0)
        self.views_embedding = nn.Embedding(config.num_levels, d, padding_idx=0)
        self.user_embedding = nn.Embedding(item_table.user_rows, d, padding_idx=0) if config.user_id else None
        self.context_dim = (3 if config.user_id else 2) * d
        # The item tables are inputs, not state: keep DDP from broadcasting them each step.
        self._ddp_params_and_buffers_to_ignore = [f"items.{name}" for name, _ in self.items.named_buffers()]

    def level_embeddings(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The row's context: the target's likes and views levels, and the user when the
        config asks (``self.context_dim`` wide in all)."""
        out = [self.likes_embedding(batch["likes_level"].long()),
               self.views_embedding(batch["views_level"].long())]
        if self.user_embedding is not None:
            out.append(self.user_embedding(self.user_rows(batch)))
        return out

    def user_rows(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of the user_id table: id % buckets + 1 when hashing, else the id itself,
        with ids the table has no row for (users first seen after train) on row 0."""
        if "user_id" not in batch:
            raise ValueError("the model uses user_id but the batch has no user_id column")
        ids = batch["user_id"].long()
        if self.config.user_id_buckets:
            return ids % self.config.user_id_buckets + 1
        rows = self.user_embedding.num_embeddings
        return torch.where((ids >= 0) & (ids < rows), ids, torch.zeros_like(ids))

    def reset_parameters(self) -> None:
        """FuxiCTR ``BaseModel.reset_parameters``: xavier_normal_ on exact nn.Linear
        modules, then ``FeatureEmbeddingDict.init_weights``: N(0, std) embedding rows 1..,
        padding row 0 zero."""
        fuxictr_reset_linear(self)
        self.items.reset_embeddings(self.config.embedding_init_std)
        with torch.no_grad():
            for table in self._context_tables():
                nn.init.normal_(table.weight[1:], std=self.config.embedding_init_std)
                table.weight[0].zero_()

    def _context_tables(self) -> list[nn.Embedding]:
        return [t for t in (self.likes_embedding, self.views_embedding, self.user_embedding) if t is not None]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The parameters FuxiCTR counts as embeddings (those inside its
        FeatureEmbeddingDict): every nn.Embedding plus the item_emb_d128 projection."""
        items = self.items.tables()
        return ([items[0].weight, items[1].weight, self.items.emb_projection.weight]
                + [t.weight for t in items[2:]] + [t.weight for t in self._context_tables()])

    def batch_items(self, target: torch.Tensor, seq: torch.Tensor):
        """Item vectors once per distinct id in the batch: (table (U, item_dim), target
        rows (B,), history rows (B, L)) indexing into the table."""
        batch, length = seq.shape
        unique_ids, index = batch_unique(torch.cat([target.reshape(-1), seq.reshape(-1)]),
                                         self.items.num_rows)
        return self.items(unique_ids), index[:batch], index[batch:].reshape(batch, length)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch).float())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ctr_loss(logits, labels)

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


MODELS: Registry[type[CTRModel]] = Registry("model", base=CTRModel)

#: ``@register_model("din", config_class=DINConfig)`` registers a CTRModel subclass.
register_model = MODELS.register
#: Registered model names, sorted.
list_models = MODELS.names


def config_class(name: str) -> type:
    """The frozen config class of model ``name`` (unknown name -> UnknownNameError)."""
    return MODELS.get(name).config_class


def model_name_of(config: object) -> str:
    """The registered name of the model whose config class ``config`` is an instance of."""
    for name in MODELS.names():
        if type(config) is MODELS.get(name).config_class:
            return name
    known = ", ".join(MODELS.get(n).config_class.__name__ for n in MODELS.names())
    raise TypeError(f"expected the config of a registered model ({known}), got {type(config).__name__}")


def build_model(name: str, config=None, item_table: ItemTable | None = None, **kwargs) -> CTRModel:
    """Instantiate model ``name`` from its config (default config when None)."""
    cls = MODELS.get(name)
    if config is None:
        config = cls.config_class()
    if not isinstance(config, cls.config_class):
        raise TypeError(f"model {name!r} needs a {cls.config_class.__name__}, got {type(config).__name__}")
    if not isinstance(item_table, ItemTable):
        raise TypeError(f"item_table must be an ItemTable (see ctr_eval.data.load_item_table), "
                        f"got {type(item_table).__name__}")
    return cls(config, item_table, **kwargs)


# Register the built-in models (imported for their decorators).
from . import din as _din  # noqa: E402,F401
from . import transact_dcn as _transact_dcn  # noqa: E402,F401
from . import qin as _qin  # noqa: E402,F401
