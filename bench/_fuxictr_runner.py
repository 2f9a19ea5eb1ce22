"""Train the challenge's DIN configuration through FuxiCTR 2.3.10 and print one JSON line.

This script runs INSIDE a virtual environment that has ``fuxictr==2.3.10`` installed
(bench/din_vs_fuxictr.py creates one). It must not import ``ctr_eval`` or ``mmembed``.

What runs through FuxiCTR itself: the feature map (``FeatureProcessor`` + ``build_dataset``
with ``rebuild_dataset=False``, as the challenge config does), the embedding tables and the
item_tags masked-mean pooling and the bias-free 128->128 projection (``FeatureEmbedding``),
the DIN target attention (``DIN_Attention``), the MLP with batch norm (``MLP_Block``), and the
whole training loop of ``BaseModel`` (initialisation, regularisation, Adam, gradient clipping
at 10, per-epoch validation AUC, lr decay on plateau, best checkpoint).

What this file writes itself (the challenge's DIN class and its data loader live in the
challenge repository, not in the fuxictr wheel, and are not vendored here):
  * ``ChallengeDIN``: the composition of the library layers described in the baseline
    (item vector = item_id emb ++ pooled tags ++ projected item_emb_d128; target attention
    over the last ``max_len`` history items; DNN over likes/views ++ target ++ pooled).
  * ``ChallengeBatches``: a batch iterator over the split parquet files, shuffled with the
    same permutation and batch cut as ctr_eval. Like the
    baseline's collate it looks the [history..., target] item rows up in item_info for
    every batch (``--collate pandas`` does it with pandas ``iloc`` as the baseline does;
    ``--collate numpy`` with plain numpy indexing), so per-batch data work is comparable.
    Unlike the baseline it uses no torch DataLoader worker processes (2-core machine).

Output: the last line of stdout is a JSON object with valid_auc, valid_logloss,
train_samples_per_s (training steps only: no preprocessing, no validation), data_s (time
spent building batches inside that), peak_rss_mb (this process), epochs, history.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from fuxictr.features import FeatureMap
from fuxictr.preprocess import FeatureProcessor, build_dataset
from fuxictr.pytorch.layers import DIN_Attention, FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import seed_everything

from benchlib import add_batch_size, gradient_moments, peak_rss_mb  # bench/, this script's folder

logger = logging.getLogger("fuxictr_runner")

DATASET_ID = "MicroLens_1M_x1"

# DIN_default of the challenge (config/din_config/model_config.yaml) + the tuner's values.
CHALLENGE_DIN = {
    "loss": "binary_crossentropy",
    "metrics": ["AUC", "logloss"],
    "task": "binary_classification",
    "optimizer": "adam",
    "embedding_dim": 64,
    "dnn_hidden_units": [1024, 512, 256],
    "dnn_activations": "ReLU",
    "attention_hidden_units": [512, 256],
    "attention_hidden_activations": "ReLU",
    "attention_output_activation": None,
    "attention_dropout": 0.1,
    "din_use_softmax": False,
    "batch_norm": True,
    "monitor": "AUC",
    "monitor_mode": "max",
    "early_stop_patience": 3,
    "save_best_only": True,
    "eval_steps": None,
    "max_len": 64,
}


def find_split_dir(data_dir: Path) -> Path:
    """Return the folder holding train/valid/item_info parquet (ROOT or ROOT/MicroLens_1M_x1)."""
    for candidate in (data_dir / DATASET_ID, data_dir):
        if (candidate / "train.parquet").is_file() and (candidate / "item_info.parquet").is_file():
            return candidate
    raise FileNotFoundError(
        f"{data_dir}: no train.parquet + item_info.parquet here or in {data_dir / DATASET_ID}"
    )


def feature_columns(n_item_rows: int, tag_vocab: int) -> list[dict]:
    """The challenge's dataset_config feature_cols, vocab sizes taken from this dataset."""
    return [
        {"name": "user_id", "active": True, "dtype": "int", "type": "meta"},
        {"name": "item_seq", "active": True, "dtype": "int", "type": "meta"},
        {"name": "likes_level", "active": True, "dtype": "int", "type": "categorical",
         "vocab_size": 11},
        {"name": "views_level", "active": True, "dtype": "int", "type": "categorical",
         "vocab_size": 11},
        {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
         "vocab_size": n_item_rows, "source": "item"},
        {"name": "item_tags", "active": True, "dtype": "int", "type": "sequence", "max_len": 5,
         "vocab_size": tag_vocab, "source": "item"},
        {"name": "item_emb_d128", "active": True, "dtype": "float", "type": "embedding",
         "source": "item", "embedding_dim": 128, "pretrain_dim": 128},
    ]


class ChallengeBatches:
    """Yields (context, items, mask) batches the way the challenge loader shapes them.

    context: likes_level, views_level, label (B,); items: item_id (B*(L+1),), item_tags
    (B*(L+1), 5), item_emb_d128 (B*(L+1), 128) for [history_1..history_L, target] per row;
    mask: (B, L) float, 0 at padded history positions.
    """

    def __init__(self, split_file: Path, item_info: pd.DataFrame, batch_size: int,
                 max_len: int, shuffle: bool, seed: int, collate: str, max_steps: int = 0):
        table = pq.read_table(split_file)
        seq = table.column("item_seq").combine_chunks()
        width = len(seq[0]) if len(seq) else 0
        flat = seq.flatten().to_numpy(zero_copy_only=False)
        self.history = flat.reshape(-1, width)[:, -max_len:].astype(np.int64)
        self.columns = {
            name: table.column(name).to_numpy().astype(np.int64)
            for name in ("likes_level", "views_level", "item_id", "label")
        }
        self.item_info = item_info
        self.tags = np.stack(item_info["item_tags"].to_numpy()).astype(np.int64)
        self.emb = np.stack(item_info["item_emb_d128"].to_numpy()).astype(np.float32)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.collate = collate
        self.num_samples = len(self.history)
        self.max_steps = max_steps  # > 0: each epoch yields only its first max_steps batches
        self.samples_yielded = 0
        self.data_seconds = 0.0

    def __len__(self) -> int:  # BaseModel counts steps with it: it must match epoch_batches()
        count = -(-self.num_samples // self.batch_size)
        count = count - 1 if count > 1 and self.num_samples % self.batch_size == 1 else count
        return min(count, self.max_steps) if self.max_steps > 0 else count

    def _items(self, ids: np.ndarray) -> dict[str, torch.Tensor]:
        if self.collate == "pandas":  # the baseline's way: DataFrame.iloc + to_list per batch
            rows = self.item_info.iloc[ids]
            return {
                "item_id": torch.from_numpy(rows["item_id"].to_numpy().copy()),
                "item_tags": torch.from_numpy(np.array(rows["item_tags"].to_list())),
                "item_emb_d128": torch.from_numpy(np.array(rows["item_emb_d128"].to_list())),
            }
        return {
            "item_id": torch.from_numpy(ids),
            "item_tags": torch.from_numpy(self.tags[ids]),
            "item_emb_d128": torch.from_numpy(self.emb[ids]),
        }

    def epoch_batches(self) -> list[np.ndarray]:
        """This epoch's batches of row numbers. The same cut as ctr_eval's (a permutation from
        numpy's default_rng([seed, epoch]); a last batch of one row joins the one before),
        so that --init-out runs can replay ctr_eval's batch order exactly."""
        n = self.num_samples
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle \
            else np.arange(n)
        batches = [order[a:a + self.batch_size] for a in range(0, n, self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches[-2] = np.concatenate([batches[-2], batches.pop()])
        return batches[:self.max_steps] if self.max_steps > 0 else batches

    def __iter__(self):
        batches = self.epoch_batches()
        self.epoch += 1
        for rows in batches:
            began = time.perf_counter()
            history = self.history[rows]
            context = {name: torch.from_numpy(col[rows]) for name, col in self.columns.items()
                       if name != "item_id"}  # the target id goes in with the item rows
            ids = np.concatenate([history, self.columns["item_id"][rows, None]], axis=1)
            items = self._items(ids.reshape(-1))
            mask = torch.from_numpy((history > 0).astype(np.float32))
            self.data_seconds += time.perf_counter() - began
            self.samples_yielded += len(rows)
            yield context, items, mask


class ChallengeDIN(BaseModel):
    """The challenge's DIN, assembled from FuxiCTR 2.3.10 layers; training is BaseModel's."""

    def __init__(self, feature_map, model_id="DIN", gpu=-1, embedding_dim=64,
                 dnn_hidden_units=(1024, 512, 256), dnn_activations="ReLU",
                 attention_hidden_units=(512, 256), attention_hidden_activations="ReLU",
                 attention_output_activation=None, attention_dropout=0.1,
                 din_use_softmax=False, net_dropout=0.0, batch_norm=True,
                 learning_rate=1e-3, embedding_regularizer=None, net_regularizer=None,
                 **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        # Width of one item vector: every feature whose source is "item" (64 + 64 + 128).
        self.item_width = sum(spec.get("embedding_dim", embedding_dim)
                              for spec in feature_map.features.values()
                              if spec.get("source") == "item")
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.attention_layers = DIN_Attention(self.item_width,
                                              attention_units=list(attention_hidden_units),
                                              hidden_activations=attention_hidden_activations,
                                              output_activation=attention_output_activation,
                                              dropout_rate=attention_dropout,
                                              use_softmax=din_use_softmax)
        self.dnn = MLP_Block(input_dim=feature_map.sum_emb_out_dim() + self.item_width,
                             output_dim=1, hidden_units=list(dnn_hidden_units),
                             hidden_activations=dnn_activations,
                             output_activation=self.output_activation,
                             dropout_rates=net_dropout, batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()
        self.train_seconds = 0.0
        self.eval_seconds = 0.0

    def forward(self, inputs):
        context, items, mask = inputs
        context = {k: v.to(self.device) for k, v in context.items()
                   if k not in self.feature_map.labels}
        items = {k: v.to(self.device) for k, v in items.items()}
        mask = mask.to(self.device)
        batch = mask.shape[0]
        context_emb = self.embedding_layer(context, flatten_emb=True)
        item_emb = self.embedding_layer(items, flatten_emb=True).view(batch, -1, self.item_width)
        target, history = item_emb[:, -1, :], item_emb[:, :-1, :]
        pooled = self.attention_layers(target, history, mask)
        return {"y_pred": self.dnn(torch.cat([context_emb, target, pooled], dim=-1))}

    def get_labels(self, inputs):
        return inputs[0][self.feature_map.labels[0]].to(self.device).float().view(-1, 1)

    # Timing hooks: training time = epoch wall time minus the validation inside it.
    def train_epoch(self, data_generator):
        began = time.perf_counter()
        eval_before = self.eval_seconds
        super().train_epoch(data_generator)
        self.train_seconds += time.perf_counter() - began - (self.eval_seconds - eval_before)

    def eval_step(self):
        began = time.perf_counter()
        super().eval_step()
        self.eval_seconds += time.perf_counter() - began


def as_regularizer(value: float):
    """0 -> int 0 like the YAML config (fuxictr then adds no term at all); else the float."""
    return 0 if value == 0 else float(value)


def step_moments(model: "ChallengeDIN", split_dir: Path, item_info: pd.DataFrame,
                 batch_rows: np.ndarray, args: argparse.Namespace) -> dict:
    """--moments-out: ``--draws`` training-mode passes over one batch from the initial
    weights (dropout draws differ, nothing else); the sum and sum of squares of every
    parameter's gradient and the losses, saved as .npz. No optimizer step is taken."""
    batches = ChallengeBatches(split_dir / "train.parquet", item_info, len(batch_rows), args.max_len,
                               False, args.seed, "numpy")
    batches.epoch_batches = lambda: [batch_rows]  # exactly the rows given, in this order
    batch = next(iter(batches))
    losses, sums, squares = gradient_moments(  # BCE + regularizer, fresh dropout each draw
        model, args.draws, lambda: model.compute_loss(model.forward(batch), model.get_labels(batch)))
    out = Path(args.moments_out)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, losses=losses, **{f"sum/{k}": v for k, v in sums.items()},
             **{f"sumsq/{k}": v for k, v in squares.items()})
    tmp.replace(out)
    return {"impl": "fuxictr", "moments_out": str(out), "draws": args.draws, "batch_rows": len(batch_rows)}


def write_init(model: torch.nn.Module, path: Path) -> None:
    """The model's state dict as .npz, written atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    tmp.replace(path)


def run(args: argparse.Namespace) -> dict:
    split_dir = find_split_dir(Path(args.data_dir))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fuxictr_bench_"))
    t_prep = time.perf_counter()
    item_info = pd.read_parquet(split_dir / "item_info.parquet")
    if not np.array_equal(item_info["item_id"].to_numpy(), np.arange(len(item_info))):
        raise ValueError(f"{split_dir / 'item_info.parquet'}: row i must hold item_id i")
    tag_vocab = int(np.stack(item_info["item_tags"].to_numpy()).max()) + 1
    params = dict(CHALLENGE_DIN)
    params.update(
        dataset_id=DATASET_ID, data_root=str(work), model_root=str(work / "checkpoints"),
        feature_cols=feature_columns(len(item_info), tag_vocab),
        label_col={"name": "label", "dtype": "float"},
        train_data=str(split_dir / "train.parquet"), valid_data=str(split_dir / "valid.parquet"),
        test_data=None, data_format="parquet", rebuild_dataset=False,
        learning_rate=args.learning_rate, batch_size=args.batch_size,
        embedding_regularizer=as_regularizer(args.embedding_regularizer),
        net_regularizer=as_regularizer(args.net_regularizer), net_dropout=args.net_dropout,
        attention_dropout=args.attention_dropout,
        epochs=args.epochs, seed=args.seed, verbose=0, gpu=-1, group_id=None,
    )
    seed_everything(seed=args.seed)
    build_dataset(FeatureProcessor(**params), **params)
    feature_map = FeatureMap(DATASET_ID, str(work / DATASET_ID))
    feature_map.load(str(work / DATASET_ID / "feature_map.json"), params)
    model = ChallengeDIN(feature_map, **params)
    if args.init_out:  # the initial weights, for a run of ctr_eval from the same start
        write_init(model, Path(args.init_out))
        if args.init_only:
            return {"impl": "fuxictr", "init_out": args.init_out, "seed": args.seed}
    if args.moments_out:
        batch_rows = ChallengeBatches(split_dir / "train.parquet", item_info, args.batch_size, args.max_len,
                                      True, args.seed, "numpy").epoch_batches()[0]
        return step_moments(model, split_dir, item_info, batch_rows, args)
    os.makedirs(model.model_dir, exist_ok=True)  # fuxictr's set_logger would make it
    train_gen = ChallengeBatches(split_dir / "train.parquet", item_info, args.batch_size,
                                 args.max_len, True, args.seed, args.collate, args.steps)
    valid_gen = ChallengeBatches(split_dir / "valid.parquet", item_info, args.batch_size,
                                 args.max_len, False, args.seed, args.collate)
    prep_s = time.perf_counter() - t_prep

    history = []
    original_checkpoint = model.checkpoint_and_earlystop

    def record(logs, min_delta=1e-6):  # keep each epoch's validation metrics
        history.append({k: float(v) for k, v in logs.items()})
        original_checkpoint(logs, min_delta=min_delta)

    model.checkpoint_and_earlystop = record
    model.fit(train_gen, epochs=args.epochs, validation_data=valid_gen, max_gradient_norm=10.0)
    epochs_run = model._epoch_index + 1
    final = model.evaluate(valid_gen, metrics=["AUC", "logloss"])
    samples = train_gen.samples_yielded
    return {
        "impl": "fuxictr",
        "fuxictr_version": __import__("fuxictr").__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "valid_auc": float(final["AUC"]),
        "valid_logloss": float(final["logloss"]),
        "epochs": epochs_run,
        "train_rows": train_gen.num_samples,
        "max_steps_per_epoch": args.steps or None,
        "valid_rows": valid_gen.num_samples,
        "history_len": int(train_gen.history.shape[1]),
        "batch_size": args.batch_size,
        "train_seconds": model.train_seconds,
        "train_samples_per_s": samples / model.train_seconds,
        "data_s": train_gen.data_seconds,
        "prep_s": prep_s,
        "peak_rss_mb": peak_rss_mb(),
        "history": history,
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="dataset root (challenge layout)")
    p.add_argument("--work-dir", default=None, help="feature map + checkpoints (default: temp)")
    p.add_argument("--epochs", type=int, default=2)
    add_batch_size(p, 8192)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--embedding-regularizer", type=float, default=1e-6)
    p.add_argument("--net-regularizer", type=float, default=0.0)
    p.add_argument("--net-dropout", type=float, default=0.1)
    p.add_argument("--attention-dropout", type=float, default=0.1)
    p.add_argument("--init-out", default=None,
                   help="write the model's initial state dict here (.npz) before training")
    p.add_argument("--init-only", action="store_true",
                   help="with --init-out: write the initial weights and stop (no training); the same "
                        "seed gives the same weights as a training run's start")
    p.add_argument("--moments-out", default=None,
                   help="instead of training: gradient moments over --draws dropout draws of the "
                        "first training batch from the initial weights (.npz); see bench/din_dropout_moments.py")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--seed", type=int, default=20242025)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--collate", choices=["pandas", "numpy"], default="pandas")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--steps", type=int, default=0,
                   help="> 0: train only the first N batches of each epoch (speed measurements; the "
                        "whole split is still loaded)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.init_only and not args.init_out:
        raise SystemExit("--init-only needs --init-out")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s fuxictr-runner %(levelname)s %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
    sys.exit(main())
