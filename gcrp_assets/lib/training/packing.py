"""Padding-free packing of training batches (plain torch + transformers, no Dagster).

A packed micro-batch is the `batch_size` samples of the ordinary micro-batch concatenated into one row
(the `DataCollatorWithFlattening` layout): no padding, `position_ids` restarting at 0 for every sample,
and the sample boundaries as flash-attention style `cu_seq_lens_q/k` + `max_length_q/k` kwargs. The
step count, the samples per step and the learning-rate schedule are exactly those of padded batches;
only the wasted compute on pad tokens goes away.

No attention crosses a sample boundary:

- on a CUDA machine with `flash-attn`, `flash_attention_2` reads the `cu_seq_lens` kwargs itself;
- elsewhere (CPU, or a GPU without flash-attn) the model runs `sdpa_packed`, registered here in
  transformers' `AttentionInterface`: it runs causal SDPA on each sample's span separately, so each
  sample costs its own `L_i^2 / 2` attention instead of a `(sum L)^2` block-diagonal mask.

The loss is the same token-weighted mean over trained tokens as a padded batch: the first label of
every sample is `IGNORE` (the token before it belongs to the previous sample), and the logits are
computed only at positions that predict a trained token (`logits_to_keep` indices + matching
`shift_labels`), which transformers' causal-LM loss and the Trainer's token count both honour.
"""

from __future__ import annotations

import importlib.util

from dataclasses import dataclass, field

from gcrp_assets.lib.formats.tokenization import IGNORE

PACKED_ATTENTION = "sdpa_packed"
_PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def pack(rows: list[dict], trained_logits_only: bool = True) -> dict:
    """One row holding every sample of `rows`, with per-sample `position_ids` and sample boundaries."""
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    bounds = [0]
    for row in rows:
        n = len(row["input_ids"])
        ids += row["input_ids"]
        labels += [IGNORE] + list(row["labels"][1:])   # never predict a sample's first token from the previous one
        positions += range(n)
        bounds.append(bounds[-1] + n)
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    cu = torch.tensor(bounds, dtype=torch.int32)
    batch = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
    }
    if trained_logits_only:
        # Position p predicts token p+1: keep the logits of positions whose next label is trained.
        nxt = torch.tensor(labels[1:] + [IGNORE], dtype=torch.long)
        keep = (nxt != IGNORE).nonzero().flatten()
        if keep.numel() == 0:        # nothing trained in this batch: keep one position, its label ignored
            keep = torch.tensor([0])
        batch["logits_to_keep"] = keep
        batch["shift_labels"] = nxt[keep].unsqueeze(0)
    return batch


def pad(rows: list[dict], pad_id: int) -> dict:
    """The classic layout: one row per sample, right-padded to the longest, with a 2D attention mask."""
    from gcrp_assets.lib.training.data import collate

    return collate(rows, pad_id)


@dataclass
class TokenCounts:
    """Tokens the training batches carried: real (sample) tokens, and the slots padding would take."""
    real: int = 0          # tokens of the samples themselves
    slots: int = 0         # tokens of the tensors actually computed on (== real when packed)
    padded_slots: int = 0  # what right-padding each micro-batch to its longest sample would compute on
    batches: int = 0

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.real / self.slots if self.slots else 0.0

    @property
    def padding_waste_if_padded(self) -> float:
        return 1.0 - self.real / self.padded_slots if self.padded_slots else 0.0


@dataclass
class Collator:
    """The Trainer's data collator: packed or padded batches; counts the tokens of train rows it collates
    (rows carrying `split == "eval"` are collated the same way but not counted)."""
    packing: bool
    pad_id: int
    trained_logits_only: bool = True
    counts: TokenCounts = field(default_factory=TokenCounts)

    def __call__(self, rows: list[dict]) -> dict:
        if all(r.get("split", "train") == "train" for r in rows):
            lengths = [len(r["input_ids"]) for r in rows]
            self.counts.real += sum(lengths)
            self.counts.padded_slots += max(lengths) * len(lengths)
            self.counts.slots += sum(lengths) if self.packing else max(lengths) * len(lengths)
            self.counts.batches += 1
        return pack(rows, self.trained_logits_only) if self.packing else pad(rows, self.pad_id)


def padding_waste(lengths: list[int], batch_size: int) -> float:
    """Share of pad tokens when consecutive `batch_size` samples are right-padded to their longest."""
    real = sum(lengths)
    slots = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                for i in range(0, len(lengths), batch_size))
    return 1.0 - real / slots if slots else 0.0


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          is_causal=None, **kwargs):
    """transformers attention function: causal SDPA per packed sample (`cu_seq_lens_q`), else plain SDPA.

    query/key/value are (batch, heads, tokens, head_dim); returns (batch, tokens, heads, head_dim).
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    rest = {k: v for k, v in kwargs.items() if k not in _PACKED_KEYS}
    positions = kwargs.get("position_ids")
    if cu is None and positions is not None and attention_mask is None and positions.shape[0] == 1:
        starts = (positions[0] == 0).nonzero().flatten().tolist()   # DataCollatorWithFlattening without kwargs
        if len(starts) > 1 and starts[0] == 0:
            cu = torch.tensor(starts + [positions.shape[1]])
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **rest)
    bounds = cu.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                        value[:, :, start:end], None, dropout=dropout, scaling=scaling,
                                        is_causal=True, **rest)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def register_packed_attention() -> str:
    """Make `attn_implementation="sdpa_packed"` available to `from_pretrained` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    return PACKED_ATTENTION


def attention_for(packing: bool, requested: str = "auto") -> str:
    """The attention implementation a run uses: `requested` unless 'auto'; for 'auto', flash-attn 2 for
    packed batches on a CUDA machine that has it, `sdpa_packed` for packed batches otherwise, `sdpa` for
    padded batches."""
    if requested != "auto":
        if requested == PACKED_ATTENTION:
            register_packed_attention()
        return requested
    if not packing:
        return "sdpa"
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return register_packed_attention()
