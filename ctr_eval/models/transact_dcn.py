"""TransAct + DCNv2 (Task 2), the 1st-place model of the WWW 2025 MM-CTR challenge.

As its published ``Transformer_DCN`` (FuxiCTR-based): every history item (256 wide, the
same three item features as the DIN) is concatenated with the target item (512 wide);
an ``nn.TransformerEncoder`` (post-norm, ReLU, ``num_heads`` heads, ``dim_feedforward``,
``transformer_dropout``) encodes the sequence; outputs at masked positions are set to 0;
the last ``first_k_cols`` outputs are flattened, and a max over unmasked positions goes
through ``Linear(512, 512)``. Then [likes, views, target, transformer output] feeds
CrossNetV2 (``dcn_cross_layers``) in parallel with an MLP (``dcn_hidden_units``,
dropout ``net_dropout``), and a head MLP (``mlp_hidden_units``, no dropout) gives the logit.

Masking. The published code passes ``mask = (item_seq > 0)`` (True at real items) as
``src_key_padding_mask`` (True = ignore), so attention only sees padding positions
and the real history is zeroed afterwards; its ``adjust_mask`` un-masks the last
position of rows whose mask is all True. ``published_mask=True`` does exactly that.
``published_mask=False`` (default) masks padding instead, and the same ``adjust_mask``
then does what it was written for: a row with no history at all attends to its last
(padding) position, whose input is [zero item | target], so no row is fully masked and
no NaN appears.

What the published mask means in practice (eval mode, no positional encoding): every
padding position has the same input, so each one's attention output is the same
whatever their number; a row with at least one padding position therefore gets a
transformer output that depends on the target item only, and a row with a full
history (no padding) sees only its most recent item.

Init as FuxiCTR ``BaseModel.reset_parameters``: xavier_normal_ + zero bias on exact
nn.Linear modules (encoder feed-forward layers, pooling linear, cross layers, MLPs);
the attention's packed in-projection and its out_proj (a Linear subclass) keep
PyTorch's init, identical across encoder layers because nn.TransformerEncoder deep-copies
the first layer -- as in the published model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Regularizer, TrainingConfig, probability, setting
from ..data import ItemTable
from ..layers import CrossNetV2, MLPBlock
from . import CTRModel, register_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransActConfig(TrainingConfig):
    """The 1st-place Task 2 model: Transformer over [history item | target] + DCNv2.

    Values from its published model config: 2 encoder layers, 1 head, feed-forward 256,
    dropout 0.2, the last ``first_k_cols`` = 16 encoder outputs flattened plus a
    max-pooled summary through a Linear; DCNv2 (3 CrossNetV2 layers) in parallel with an
    MLP [1024, 512, 256] (dropout 0.2); head MLP [64, 32]; embedding 64; Adam 5e-4,
    batch 128; early stopping patience 5.

    ``published_mask=True`` reproduces the published code's mask (the "real item" mask
    passed as PyTorch's key padding mask, so attention sees padding and ignores real
    history); ``False`` masks padding as intended.

    ``max_len``: the published config sets none, so its loader kept its default of 100
    history positions; 64 here, as for the DIN (change it in Task 2 mode if wanted).
    """

    embedding_dim: int = 64
    pretrained_dim: int = 128
    num_levels: int = 11
    max_len: int = 64
    num_heads: int = 1
    transformer_layers: int = 2
    dim_feedforward: int = 256
    transformer_dropout: float = probability(0.2)
    first_k_cols: int = setting(16, at_least=0)
    concat_max_pool: bool = True
    published_mask: bool = False
    dcn_cross_layers: int = setting(3, at_least=0)
    dcn_hidden_units: tuple[int, ...] = (1024, 512, 256)
    mlp_hidden_units: tuple[int, ...] = (64, 32)
    hidden_activations: str = setting("relu", choices=("relu",))
    net_dropout: float = probability(0.2)
    batch_norm: bool = False
    embedding_init_std: float = 1e-4
    embedding_regularizer: Regularizer = 0.0
    net_regularizer: Regularizer = 0.0
    learning_rate: float = setting(5e-4, above=0.0)
    batch_size: int = 128
    early_stop_patience: int = setting(5, at_least=0)


@register_model("transact_dcn", config_class=TransActConfig)
class TransActDCN(CTRModel):
    """The 1st-place Task 2 model (see :class:`TransActConfig`)."""

    tiny_config = {"embedding_dim": 8, "first_k_cols": 4, "dim_feedforward": 32,
                   "dcn_hidden_units": (32, 16), "mlp_hidden_units": (8,)}

    def __init__(self, config: TransActConfig, item_table: ItemTable) -> None:
        super().__init__()
        self.config = config
        self._build_embeddings(config, item_table)
        item_dim = self.items.output_dim
        model_dim = 2 * item_dim
        if model_dim % config.num_heads:
            raise ValueError(f"num_heads={config.num_heads} must divide the transformer width {model_dim}")
        layer = nn.TransformerEncoderLayer(model_dim, config.num_heads,
                                           dim_feedforward=config.dim_feedforward,
                                           dropout=config.transformer_dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.transformer_layers,
                                             enable_nested_tensor=False)
        self.pool_linear = nn.Linear(model_dim, model_dim) if config.concat_max_pool else None
        seq_out = (config.first_k_cols + int(config.concat_max_pool)) * model_dim
        dcn_in = self.context_dim + item_dim + seq_out
        self.crossnet = CrossNetV2(dcn_in, config.dcn_cross_layers)
        self.parallel_dnn = MLPBlock(dcn_in, config.dcn_hidden_units, dropout=config.net_dropout,
                                     batch_norm=config.batch_norm)
        self.head = MLPBlock(dcn_in + self.parallel_dnn.output_dim, config.mlp_hidden_units,
                             output_dim=1)
        self.reset_parameters()

    def key_padding_mask(self, seq: torch.Tensor) -> torch.Tensor:
        """True where attention must ignore a position (see the module docstring)."""
        mask = seq != 0 if self.config.published_mask else seq == 0
        fully_masked = mask.all(dim=-1)
        mask[fully_masked, -1] = False
        return mask

    def sequence_features(self, target_emb: torch.Tensor, history: torch.Tensor,
                          seq: torch.Tensor) -> torch.Tensor:
        batch, length, _ = history.shape
        x = torch.cat([history, target_emb.unsqueeze(1).expand(-1, length, -1)], dim=-1)
        ignore = self.key_padding_mask(seq)
        out = self.encoder(x, src_key_padding_mask=ignore)
        out = out.masked_fill(ignore.unsqueeze(-1), 0.0)
        parts = []
        k = self.config.first_k_cols
        if k:
            last = out[:, -k:]
            if last.shape[1] < k:  # shorter history than k: the missing positions act as
                last = F.pad(last, (0, 0, k - last.shape[1], 0))  # masked padding (zeros)
            parts.append(last.reshape(batch, -1))
        if self.pool_linear is not None:
            pooled = out.masked_fill(ignore.unsqueeze(-1), -1e9).max(dim=1).values
            parts.append(self.pool_linear(pooled))
        return torch.cat(parts, dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["item_id"].long()
        seq = batch["item_seq"].long()
        table, target_rows, history_rows = self.batch_items(target, seq)
        target_emb = table.index_select(0, target_rows)
        history = table.index_select(0, history_rows.reshape(-1)).reshape(*history_rows.shape, -1)
        features = torch.cat([*self.level_embeddings(batch), target_emb,
                              self.sequence_features(target_emb, history, seq)], dim=-1)
        crossed = self.crossnet(features)
        deep = self.parallel_dnn(features)
        return self.head(torch.cat([crossed, deep], dim=-1)).squeeze(-1)
