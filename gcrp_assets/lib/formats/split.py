"""Deterministic train/eval split by thread, stable as the corpus grows.

A thread goes to eval when the hash of its key falls under `eval_fraction`; if that leaves fewer
than `min_eval_threads`, the threads with the smallest hashes are added. All variants and windows
of one thread share its key, so none ever straddles the split.
"""

from __future__ import annotations

import hashlib


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(thread_keys: list[str], eval_fraction: float, min_eval_threads: int, seed: int) -> dict[str, str]:
    keys = sorted(set(thread_keys))
    scores = {k: _unit_hash(k, seed) for k in keys}
    eval_keys = {k for k in keys if scores[k] < eval_fraction}
    wanted = min(min_eval_threads, max(len(keys) - 1, 0))
    for key in sorted(keys, key=lambda k: scores[k]):
        if len(eval_keys) >= wanted:
            break
        eval_keys.add(key)
    return {k: ("eval" if k in eval_keys else "train") for k in keys}
