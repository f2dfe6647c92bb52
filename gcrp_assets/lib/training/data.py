"""Tokenized rows to padded training batches (plain torch, no Dagster). Packed batches: `packing.py`."""

from __future__ import annotations

import math

from pathlib import Path

import pyarrow.parquet as pq

from gcrp_assets.lib.formats.tokenization import IGNORE


def load_split(path: Path, split: str) -> list[dict]:
    table = pq.read_table(path, columns=["sample_id", "window", "thread_key", "split", "input_ids", "labels",
                                              "n_trained"])
    return [row for row in table.to_pylist() if row["split"] == split]


def data_formats(path: Path) -> set[str]:
    """The prompt formats the tokenized rows were rendered in (the `format` column; empty if absent)."""
    schema = pq.read_schema(path)
    if "format" not in schema.names:
        return set()
    return {f for f in pq.read_table(path, columns=["format"]).column("format").to_pylist() if f}


def collate(rows: list[dict], pad_id: int) -> dict:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(row["labels"], dtype=torch.long)
        attention[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def losses_are_finite(history: list[dict]) -> bool:
    """Every logged training (`loss`) and eval (`eval_loss`) loss of a Trainer log history is finite, and
    at least one was logged."""
    losses = [h[k] for h in history for k in ("loss", "eval_loss") if k in h]
    return bool(losses) and all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses)
