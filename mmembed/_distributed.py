"""Which process am I: a thin layer over Accelerate for sharded feature extraction.

Under ``accelerate launch --multi_gpu`` (several GPUs or nodes) or ``torchrun`` the
launcher sets ``WORLD_SIZE``; then one ``accelerate.PartialState`` is created (it sets up
the process group and, on GPUs, this process's CUDA device, so an encoder that asks for
"cuda" lands on its own card; without a GPU it forms a gloo group on the CPU). A plain
``python`` run stays a single process and does not import Accelerate at all.

Note: ``accelerate launch --cpu --num_processes 2`` starts ONE process unless MPI is
set up (``--mpirun_hostfile``); for several CPU processes on one machine use
``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs, or
``torchrun --nproc_per_node 2``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessContext:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    state: Any = None  # accelerate.PartialState when distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait until every process arrives (no-op for one process)."""
        if self.distributed:
            self.state.wait_for_everyone()


def _accelerate_already_set_up() -> bool:
    import sys

    if "accelerate" not in sys.modules:
        return False
    from accelerate.state import PartialState

    return bool(PartialState._shared_state)


def current_process() -> ProcessContext:
    """The ProcessContext of this process (rank 0 of 1 outside a distributed launch)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not _accelerate_already_set_up():
        return ProcessContext()
    import torch
    from accelerate import PartialState

    # Without a GPU, Accelerate only forms a process group (gloo) when asked for the CPU.
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)
    if state.num_processes <= 1:
        return ProcessContext()
    return ProcessContext(rank=state.process_index, world_size=state.num_processes, state=state)
