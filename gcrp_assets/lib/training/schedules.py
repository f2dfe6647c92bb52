"""Batch geometry and learning-rate schedules in optimizer steps (plain Python, no torch).

Recipes speak in epochs ("3 stable epochs, then 25 % until epoch 5"); transformers' schedulers speak in
optimizer steps. `steps_per_epoch` reproduces the HF Trainer's own count (distributed sampler without
drop_last, a partial accumulation window counts as a step), so the epoch boundaries land exactly.
"""

from __future__ import annotations

import math
from typing import Any

WSD = "warmup_stable_decay"


def accumulation_steps(hp: dict[str, Any], world_size: int) -> int:
    """Micro-batches per optimizer step: `global_batch_size / (batch_size * world_size)` when a global batch
    is set (it must divide evenly), else `gradient_accumulation_steps`."""
    global_batch = hp.get("global_batch_size", 0)
    if not global_batch:
        return hp["gradient_accumulation_steps"]
    per_pass = hp["batch_size"] * world_size
    if global_batch % per_pass:
        raise ValueError(f"global_batch_size {global_batch} is not a multiple of batch_size {hp['batch_size']} x "
                         f"{world_size} processes; change batch_size, nproc_per_node or global_batch_size")
    return global_batch // per_pass


def steps_per_epoch(n_rows: int, batch_size: int, world_size: int, accumulation: int) -> int:
    """Optimizer steps in one epoch of `n_rows`, as the HF Trainer counts them."""
    per_rank = math.ceil(n_rows / world_size)
    batches = math.ceil(per_rank / batch_size)
    return max(batches // accumulation + int(batches % accumulation > 0), 1)


def total_steps(hp: dict[str, Any], per_epoch: int) -> int:
    return hp["max_steps"] if hp["max_steps"] > 0 else math.ceil(hp["num_epochs"] * per_epoch)


def scheduler_kwargs(hp: dict[str, Any], per_epoch: int) -> dict[str, Any]:
    """`lr_scheduler_kwargs` for the HF Trainer. For warmup-stable-decay: the stable phase lasts
    `wsd_stable_epochs` (0: whatever the warm-up and the decay leave), the decay `wsd_decay_epochs`
    (0: an immediate drop), and the rate then stays at `min_lr_ratio` of the peak until the end."""
    if hp["lr_scheduler"] != WSD:
        return {}
    kwargs: dict[str, Any] = {"num_decay_steps": round(hp["wsd_decay_epochs"] * per_epoch),
                              "min_lr_ratio": hp["min_lr_ratio"]}   # decay shape: transformers' default, cosine
    if hp["wsd_stable_epochs"] > 0:
        kwargs["num_stable_steps"] = round(hp["wsd_stable_epochs"] * per_epoch)
    return kwargs


def wsd_lr_ratio(step: int, warmup: int, stable: int, decay: int, min_ratio: float) -> float:
    """Expected multiplier of the peak rate at scheduler step `step` (linear warm-up from `min_ratio`,
    cosine decay), for checks and docs; transformers' `get_wsd_schedule` is what trains."""
    if step < warmup:
        return min_ratio + (1 - min_ratio) * step / max(1, warmup)
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = (step - warmup - stable) / max(1, decay)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio
