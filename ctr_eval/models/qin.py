"""QIN (Task 2), the 2nd-place model of the WWW 2025 MM-CTR challenge (team DISCO.AHU).

As its published ``QIN_variety_v9`` (FuxiCTR-based) describes it:

- Target attention with ReLU scores instead of a softmax: query, key and value are
  bias-free linear maps of the item vectors to twice their width; a history position's
  score is q.k / sqrt(width), multiplied by 0 at padding, then ReLU; the pooled history
  is sum(score * v) through an output Linear back to the item width, plus the target
  item itself (a residual).
- A quadratic neural network over [likes, views, (user), target, pooled history]: each
  of ``num_layers`` layers maps x to R = ``num_row`` vectors h_r = Dropout(Linear(x))
  of x's width and outputs x * sum_r h_r (the Khatri-Rao form of a quadratic neuron),
  then BatchNorm, PReLU, Dropout, plus x (a residual); a last Linear gives the logit.

Config values from its published model config (``QIN_variety_v9``): embedding 128,
4 layers of 3 rows, dropout 0.1, batch norm, Adam 2e-3 with embedding regularizer 2e-4,
batch 8192, early stopping patience 3, learning rate halved on a plateau.

The item vector is the one every model here shares (id, tags, projected item_emb_d128 and
the Task 2 item features the config turns on); the published code built its own feature
set from a FuxiCTR feature map. Dropout is :class:`~ctr_eval.global_batch.GlobalBatchDropout`,
so several processes train the one-process model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Regularizer, TrainingConfig, probability, setting
from ..data import ItemTable
from ..global_batch import GlobalBatchDropout
from . import CTRModel, register_model


@dataclass(frozen=True)
class QINConfig(TrainingConfig):
    """The 2nd-place Task 2 model: ReLU-scored target attention + a quadratic network."""

    embedding_dim: int = 128
    pretrained_dim: int = 128
    num_levels: int = 11
    max_len: int = 64
    attention_scale: bool = True  # divide scores by sqrt(attention width)
    num_layers: int = setting(4, at_least=1)
    num_row: int = setting(3, at_least=1)
    net_dropout: float = probability(0.1)
    batch_norm: bool = True
    embedding_init_std: float = 1e-4
    embedding_regularizer: Regularizer = 2e-4
    net_regularizer: Regularizer = 0.0
    learning_rate: float = setting(2e-3, above=0.0)
    lr_decay_factor: float = probability(0.5)
    batch_size: int = 8192
    early_stop_patience: int = setting(3, at_least=0)


class ReLUTargetAttention(nn.Module):
    """Target attention with ReLU scores (no softmax), padding scored 0, plus the target.

    Keys and values are linear maps of item vectors, so they are computed once per
    distinct item of the batch (``table``) and gathered per history position: the same
    function as projecting every position, at a fraction of the work."""

    def __init__(self, item_dim: int, scale: bool = True) -> None:
        super().__init__()
        width = 2 * item_dim
        self.query = nn.Linear(item_dim, width, bias=False)
        self.key = nn.Linear(item_dim, width, bias=False)
        self.value = nn.Linear(item_dim, width, bias=False)
        self.output = nn.Linear(width, item_dim)
        self.scale = width ** 0.5 if scale else 1.0

    def forward(self, target: torch.Tensor, table: torch.Tensor, history_rows: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """target (B, D); table (U, D) item vectors; history_rows (B, L) rows of ``table``;
        mask (B, L) True at real items -> (B, D)."""
        batch, length = history_rows.shape
        rows = history_rows.reshape(-1)
        keys = self.key(table).index_select(0, rows).view(batch, length, -1)
        values = self.value(table).index_select(0, rows).view(batch, length, -1)
        scores = torch.einsum("bw,blw->bl", self.query(target), keys) / self.scale
        scores = torch.relu(scores * mask.to(scores.dtype))
        pooled = torch.einsum("bl,blw->bw", scores, values)
        return self.output(pooled) + target


class QuadraticLayer(nn.Module):
    """x * sum_r Dropout(Linear_r(x)): R linear maps of x, each multiplied into x."""

    def __init__(self, width: int, rows: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width * rows)
        self.dropout = GlobalBatchDropout(dropout)
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.linear(x)).view(x.shape[0], self.rows, x.shape[1])
        return x * h.sum(dim=1)


class QuadraticNetwork(nn.Module):
    """Residual quadratic layers (each: quadratic, [BatchNorm], PReLU, [Dropout]), then
    a Linear to the logit."""

    def __init__(self, width: int, layers: int, rows: int, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            parts: list[nn.Module] = [QuadraticLayer(width, rows, dropout)]
            if batch_norm:
                parts.append(nn.BatchNorm1d(width))
            parts.append(nn.PReLU())
            if dropout > 0:
                parts.append(GlobalBatchDropout(dropout))
            self.blocks.append(nn.Sequential(*parts))
        self.fc = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x) + x
        return self.fc(x)


@register_model("qin", config_class=QINConfig)
class QIN(CTRModel):
    """The 2nd-place Task 2 model (see the module docstring and :class:`QINConfig`)."""

    tiny_config = {"embedding_dim": 8, "num_layers": 2, "num_row": 2}

    def __init__(self, config: QINConfig, item_table: ItemTable) -> None:
        super().__init__()
        self.config = config
        self._build_embeddings(config, item_table)
        item_dim = self.items.output_dim
        self.attention = ReLUTargetAttention(item_dim, scale=config.attention_scale)
        self.qnn = QuadraticNetwork(self.context_dim + 2 * item_dim, config.num_layers, config.num_row,
                                    config.net_dropout, config.batch_norm)
        self.reset_parameters()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["item_id"].long()
        seq = batch["item_seq"].long()
        table, target_rows, history_rows = self.batch_items(target, seq)
        target_emb = table.index_select(0, target_rows)
        pooled = self.attention(target_emb, table, history_rows, seq != 0)
        features = torch.cat([*self.level_embeddings(batch), target_emb, pooled], dim=-1)
        return self.qnn(features).squeeze(-1)
