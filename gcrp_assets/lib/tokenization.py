"""Samples to model-ready rows: render once, tokenize once, labels from character offsets.

A token trains when it lies wholly inside a trained span of the rendered string (model turns:
name, text and terminator; raw-text formats: everything). Samples longer than `max_length` are
cut into windows at turn boundaries, each window starting again with BOS and the system prompt;
a window is rendered and tokenized as a whole, so its token boundaries match inference.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from gcrp_assets.lib.formats import ChatFormat, Rendered, render

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    text: str
    first_turn: int
    last_turn: int  # exclusive

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass(frozen=True)
class Dropped:
    sample_id: str
    turn: int
    reason: str
    detail: str


def labels_for(rendered: Rendered, input_ids: list[int], offsets: list[tuple[int, int]]) -> list[int]:
    spans = [(b.train_start, b.end) for b in rendered.blocks if b.trained and b.end > b.train_start]
    starts = [s for s, _ in spans]
    labels = []
    for token, (a, b) in zip(input_ids, offsets):
        i = bisect.bisect_right(starts, a) - 1
        inside = i >= 0 and spans[i][0] <= a and b <= spans[i][1] and b > a
        labels.append(token if inside else IGNORE)
    return labels


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def tokenize_rendered(tokenizer, rendered: Rendered, first: int, last: int) -> Tokenized:
    ids, offsets = _encode(tokenizer, rendered.text)
    return Tokenized(ids, labels_for(rendered, ids, offsets), rendered.text, first, last)


def tokenize_sample(sample: dict, fmt: ChatFormat, tokenizer, max_length: int) -> tuple[list[Tokenized], list[Dropped]]:
    bos = tokenizer.bos_token
    n_turns = len(sample["turns"])
    full = render(sample, fmt, bos)
    ids, offsets = _encode(tokenizer, full.text)
    if len(ids) <= max_length:
        return [Tokenized(ids, labels_for(full, ids, offsets), full.text, 0, n_turns)], []

    # Token cost of each block, from the one full tokenization: starts of blocks in token positions.
    token_starts = [a for a, _ in offsets]
    def tokens_in(block) -> int:
        return bisect.bisect_left(token_starts, block.end) - bisect.bisect_left(token_starts, block.start)
    head = sum(tokens_in(b) for b in full.blocks if b.kind in ("bos", "system"))
    turn_cost = [tokens_in(b) for b in full.blocks if b.turn >= 0]

    windows: list[Tokenized] = []
    dropped: list[Dropped] = []
    first = 0
    while first < n_turns:
        if head + turn_cost[first] > max_length:
            dropped.append(Dropped(sample["sample_id"], first, "turn_exceeds_max_length",
                                   f"turn {first} needs {turn_cost[first]} tokens + {head} of system prompt "
                                   f"> max_length {max_length}"))
            first += 1
            continue
        last, used = first, head
        while last < n_turns and used + turn_cost[last] <= max_length:
            used += turn_cost[last]
            last += 1
        window = tokenize_rendered(tokenizer, render(sample, fmt, bos, (first, last)), first, last)
        # Re-tokenizing a window can merge differently at its edges; shrink until it fits.
        while len(window.input_ids) > max_length and last - first > 1:
            last -= 1
            window = tokenize_rendered(tokenizer, render(sample, fmt, bos, (first, last)), first, last)
        if len(window.input_ids) > max_length:
            dropped.append(Dropped(sample["sample_id"], first, "turn_exceeds_max_length",
                                   f"turn {first} does not fit in max_length {max_length}"))
        elif window.n_trained == 0:
            dropped.append(Dropped(sample["sample_id"], first, "no_trained_tokens",
                                   f"turns {first}..{last - 1} hold no model turn"))
        else:
            windows.append(window)
        first = last
    return windows, dropped
