"""The challenge's DIN (Task 1), as its baseline builds it on FuxiCTR.

The baseline's ``src/DIN.py`` (WWW 2025 MM-CTR repo) embeds ``likes_level`` and
``views_level`` from the batch (64 each; level 0 hits ``padding_idx=0`` and is a fixed
zero vector, as FuxiCTR's tokenizer reserves index 0), embeds every history item and the
target with the three item features (256 wide), runs ``DIN_Attention(target, history,
mask)`` and feeds [likes, views, target, pooled history] (640) to
``MLP_Block([1024, 512, 256], batch_norm=True, dropout=net_dropout)`` with a Sigmoid
output (here the logit; see ``ctr_eval.models.ctr_loss``).

Initialisation as FuxiCTR ``BaseModel.reset_parameters``: xavier_normal_ on every
nn.Linear (the item_emb_d128 projection included) with zero bias, then
``FeatureEmbeddingDict.init_weights``: normal(std=1e-4) on embedding rows 1.., row 0 zero.
BatchNorm keeps PyTorch's init (weight 1, bias 0).

Speed without changing the function: item representations are computed once per
distinct item id in the batch, and the attention uses the exact algebraic split of
:class:`ctr_eval.layers.DINAttention` (``attention_impl="plain"`` runs FuxiCTR's
formulation, item representation per position included, for tests and benchmarks).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import Regularizer, TrainingConfig, probability, setting
from ..data import ItemTable
from ..layers import ATTENTION_IMPLS, DINAttention, MLPBlock
from . import CTRModel, register_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DINConfig(TrainingConfig):
    """The challenge's DIN (Task 1), as the official baseline resolves it.

    Architecture (FuxiCTR DIN + the challenge's ``src/DIN.py``): an item is
    item_id emb (64) + masked-mean item_tags emb (64) + bias-free Linear(128->128) of
    item_emb_d128 = 256 wide; DIN_Attention over the last ``max_len`` history items
    with an MLP [4*256 -> 512 -> 256 -> 1] (ReLU, dropout after each hidden layer, no
    batch norm, no softmax, padding scores multiplied by 0); DNN over
    [likes (64), views (64), target (256), pooled history (256)] = 640 ->
    1024 -> 512 -> 256 -> 1 with Linear -> BatchNorm -> ReLU -> Dropout(net_dropout).
    """

    embedding_dim: int = 64
    pretrained_dim: int = 128
    num_levels: int = 11  # vocab of likes_level / views_level
    max_len: int = 64
    attention_hidden_units: tuple[int, ...] = (512, 256)
    attention_hidden_activations: str = setting("relu", choices=("relu",))
    attention_dropout: float = probability(0.1)
    din_use_softmax: bool = False
    dnn_hidden_units: tuple[int, ...] = (1024, 512, 256)
    dnn_activations: str = setting("relu", choices=("relu",))
    net_dropout: float = probability(0.1)
    batch_norm: bool = True
    embedding_init_std: float = 1e-4
    embedding_regularizer: Regularizer = 1e-6
    net_regularizer: Regularizer = 0.0
    learning_rate: float = setting(1e-3, above=0.0)
    batch_size: int = 8192
    early_stop_patience: int = setting(3, at_least=0)


@register_model("din", config_class=DINConfig)
class DIN(CTRModel):
    """The challenge's DIN (see :class:`DINConfig` for its architecture)."""

    tiny_config = {"embedding_dim": 8, "attention_hidden_units": (16, 8), "dnn_hidden_units": (32, 16)}

    def __init__(self, config: DINConfig, item_table: ItemTable, attention_impl: str = "exact") -> None:
        super().__init__()
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {attention_impl!r}")
        self.config = config
        self.attention_impl = attention_impl
        self._build_embeddings(config, item_table)
        item_dim = self.items.output_dim
        self.attention = DINAttention(item_dim, config.attention_hidden_units,
                                      dropout=config.attention_dropout,
                                      use_softmax=config.din_use_softmax)
        self.dnn = MLPBlock(self.context_dim + 2 * item_dim, config.dnn_hidden_units, output_dim=1,
                            dropout=config.net_dropout, batch_norm=config.batch_norm)
        self.reset_parameters()

    def item_representations(self, target: torch.Tensor, seq: torch.Tensor):
        """(table (U, 256), target rows (B,), history rows (B, L)) of the batch's items."""
        if self.attention_impl != "plain":
            return self.batch_items(target, seq)
        # FuxiCTR's way, kept for the plain reference: one item vector per (sample, position)
        batch, length = seq.shape
        all_ids = torch.cat([target.reshape(-1), seq.reshape(-1)])
        index = torch.arange(all_ids.numel(), device=all_ids.device)
        return self.items(all_ids), index[:batch], index[batch:].reshape(batch, length)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["item_id"].long()
        seq = batch["item_seq"].long()
        table, target_rows, history_rows = self.item_representations(target, seq)
        target_emb = table.index_select(0, target_rows)
        pooled = self.attention(target_emb, table, history_rows, seq != 0, impl=self.attention_impl)
        features = torch.cat([*self.level_embeddings(batch), target_emb, pooled], dim=-1)
        return self.dnn(features).squeeze(-1)
