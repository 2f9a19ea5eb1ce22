"""Checkpoints of a trained head's fit: the loop's state at its last evaluation, saved
atomically and resumed only by a fit of the same inputs and settings.

``run`` is :class:`mmembed.fusion._train_loop._Run`: its ``acc`` (Accelerator), ``model``,
``optimizers``, ``state`` (plain values), ``result`` (a dataclass) and ``best_weights``.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctr_eval.format import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "fit_checkpoint.pt"


class Checkpoint:
    """The fit's state at its last evaluation in ``options.checkpoint_dir``, written
    atomically by the main process; resumed only by a fit with the same key (options
    but the folder and device, the network's shapes, ``inputs_key``)."""

    def __init__(self, options: Any, module: nn.Module, inputs_key: str) -> None:
        self.path = Path(options.checkpoint_dir) / CHECKPOINT_FILE
        settings = {k: v for k, v in asdict(options).items() if k not in ("checkpoint_dir", "device")}
        shapes = [(name, tuple(p.shape)) for name, p in module.state_dict().items()]
        self.key = hashlib.sha256(repr((settings, shapes, inputs_key)).encode()).hexdigest()

    def save(self, run: Any) -> None:
        if run.acc.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"key": self.key, "state": run.state, "result": asdict(run.result),
                       "weights": run.acc.unwrap_model(run.model).state_dict(),
                       "optimizers": [o.state_dict() for o in run.optimizers], "best_weights": run.best_weights}
            with atomic_path(self.path) as tmp:
                torch.save(payload, tmp)
        run.acc.wait_for_everyone()

    def restore(self, run: Any) -> None:
        if not self.path.is_file():
            return
        payload = torch.load(self.path, map_location=run.acc.device, weights_only=False)
        if payload.get("key") != self.key:
            logger.warning("%s: %s belongs to another fit (other inputs or settings); starting afresh",
                           run.where, self.path)
            return
        run.state.update(payload["state"])
        run.result = type(run.result)(**payload["result"])
        run.acc.unwrap_model(run.model).load_state_dict(payload["weights"])
        for optimizer, saved in zip(run.optimizers, payload["optimizers"]):
            optimizer.load_state_dict(saved)
        run.best_weights = payload["best_weights"]
        logger.info("%s: resumed from %s at step %d", run.where, self.path, run.state["step"])


def data_key(*arrays: np.ndarray) -> str:
    """A digest of arrays' shapes, dtypes and bytes, naming a fit's inputs."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()
