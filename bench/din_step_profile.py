"""One DIN training step at full histories: time per step and, with --profile, where it goes.

    python bench/din_step_profile.py --batch-size 4096 --steps 4            # samples/s
    python bench/din_step_profile.py --batch-size 4096 --steps 1 --profile  # top ops by self time
    python bench/din_step_profile.py --serial-mask                          # one bernoulli_ per mask

Random items, every one of the 64 history positions real (benchlib.random_din_batches), the
Task 1 DIN with the trainer's dropout generator and its heap setting (reuse_freed_memory),
fused Adam and gradient clipping as the trainer runs them. Used to find and check the
speed steps recorded in bench/README.md.
"""
import argparse
import time

import torch

from benchlib import add_batch_size, add_random_batch_args, random_din_batches
from ctr_eval.config import resolve_config
from ctr_eval.models import build_model
from ctr_eval.train import make_optimizer
from ctr_eval.global_batch import set_dropout_generator

p = argparse.ArgumentParser()
add_batch_size(p, 8192)
add_random_batch_args(p)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--profile", action="store_true")
p.add_argument("--serial-mask", action="store_true")
args = p.parse_args()
import ctr_eval.global_batch as gb
if args.serial_mask: gb.MASK_PIECE = 1 << 40
cfg = resolve_config("din", task1=True, batch_size=args.batch_size)
table, make_batch, _ = random_din_batches(args.items, args.positions, args.batch_size, cfg)
torch.manual_seed(0)
model = build_model("din", cfg, table)
model.train()
g = torch.Generator().manual_seed(1); set_dropout_generator(model, g)
opt = make_optimizer(model, cfg.learning_rate)
step_model = model

def step(i):
    b = make_batch(i)
    loss = model.loss(step_model(b), b["label"]) + model.regularization_loss()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_gradient_norm)
    opt.step(); opt.zero_grad(set_to_none=True)

from ctr_eval._runtime import reuse_freed_memory
_ctx = reuse_freed_memory(); _ctx.__enter__()
step(0)
times = []
for i in range(1, args.steps + 1):
    t = time.perf_counter(); step(i); times.append(time.perf_counter() - t)
print("step s", [round(x, 2) for x in times], "samples/s", round(args.batch_size * len(times) / sum(times), 1))
if args.profile:
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(99)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=28, max_shapes_column_width=70))
