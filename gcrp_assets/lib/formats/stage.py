"""The tokenize stage behind `tokenized_parquet`, without Dagster: every selected dump's samples rendered in
one prompt format, tokenized once, labels masked by the label policy, windows of `max_length`, split into
train/eval by thread, and verified.

`run_tokenize(settings, tokenizer_dir, sample_files, out)` writes `tokenized.parquet`, `eval_samples.parquet`
(the held-out samples with their turns, for eval_report's generations) and `dropped.json` into `out`, and
returns the stage's facts: counts, token totals, and the verification results the asset's blocking checks
read (one BOS per row, trained tokens decode to the trained spans, rows within `max_length`, no trained token
in a user or system turn). Every setting is declared once, on `TokenizeSettings` (`lib/formats/settings.py`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gcrp_assets.lib import schemas
from gcrp_assets.lib.clean.dedup import DedupConfig, drop_cross_dump_duplicates
from gcrp_assets.lib.formats.chat_format import get_format, render, resolve_label_policy
from gcrp_assets.lib.formats.settings import TokenizeSettings
from gcrp_assets.lib.formats.split import assign_splits
from gcrp_assets.lib.formats.tokenization import (IGNORE, check_no_trained_tokens_in_masked_turns,
                                                  tokenize_samples)
from gcrp_assets.lib.parquet import read_rows, write_table
from gcrp_assets.lib.plots import length_histogram_png, markdown_image
from gcrp_assets.lib.tables import md_table

# Rendered rows held for the masked-turn check before it runs on them (one batched offset mapping).
CHECK_BATCH = 256


@dataclass
class TokenizeResult:
    metrics: dict    # numbers and strings: counts, token totals, verification results
    markdown: dict   # name -> Markdown: dropped_reasons, token_length_histogram, preview


class _MaskedTurnCheck:
    """No trained token in a user or system turn, checked `CHECK_BATCH` rendered rows at a time."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list = []
        self.rows = self.tokens = self.unchecked = 0

    def add(self, rendered, ids, labels) -> None:
        self.pending.append((rendered, ids, labels))
        if len(self.pending) >= CHECK_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            rows, tokens, unchecked = check_no_trained_tokens_in_masked_turns(self.tokenizer, self.pending)
            self.rows, self.tokens, self.unchecked = self.rows + rows, self.tokens + tokens, self.unchecked + unchecked
            self.pending.clear()


def run_tokenize(settings: TokenizeSettings, tokenizer_dir: Path, sample_files: Sequence[Path], out: Path,
                 log: Callable[[str], None] = print, dedup: DedupConfig = DedupConfig()) -> TokenizeResult:
    """Tokenize the samples of `sample_files` (each dump's samples.parquet, earliest dump first) with the
    tokenizer in `tokenizer_dir`; write the stage's files into `out` and return its facts. Duplicates across
    dumps are decided with `dedup`, the settings the dumps were filtered with."""
    from transformers import AutoTokenizer  # imported here: importing this module needs no tokenizer

    fmt = get_format(settings.format)
    label_policy = settings.label_policy or None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    samples = [s for path in sample_files for s in read_rows(Path(path))]
    # The same thread in two dumps (a re-export, a cross-post) trains once: the earliest dump keeps it.
    samples, duplicates = drop_cross_dump_duplicates(samples, dedup)
    for duplicate in duplicates:
        log(f"cross-dump duplicate dropped: {duplicate.detail}")
    splits = assign_splits([s["thread_key"] for s in samples], settings.eval_fraction,
                           settings.min_eval_threads, settings.split_seed)
    rows, dropped = [], []
    bad_bos = bad_labels = too_long = 0
    policy = resolve_label_policy(fmt, label_policy)
    masked_check = policy != "all"  # `all` trains user and system turns by design
    check = _MaskedTurnCheck(tokenizer)

    tokenized = tokenize_samples(samples, fmt, tokenizer, settings.max_length, label_policy=label_policy,
                                 overlap_turns=settings.overlap_turns)
    for sample, (windows, lost) in zip(samples, tokenized):
        dropped += [{"sample_id": d.sample_id, "turn": d.turn, "reason": d.reason, "detail": d.detail} for d in lost]
        for index, window in enumerate(windows):
            ids, labels = window.input_ids, window.labels
            if fmt.add_bos and (ids[0] != tokenizer.bos_token_id or ids[1:2] == [tokenizer.bos_token_id]):
                bad_bos += 1
            trained = [t for t, l in zip(ids, labels) if l != IGNORE]
            rendered = render(sample, fmt, tokenizer.bos_token, (window.first_turn, window.last_turn),
                              eos_token=tokenizer.eos_token, label_policy=label_policy,
                              train_from=window.train_from)
            if tokenizer.decode(trained) != rendered.trained_text():
                bad_labels += 1
            if masked_check:
                check.add(rendered, ids, labels)
            too_long += len(ids) > settings.max_length
            rows.append({"sample_id": sample["sample_id"], "window": index, "thread_key": sample["thread_key"],
                         "split": splits[sample["thread_key"]], "format": fmt.name,
                         "first_turn": window.first_turn, "last_turn": window.last_turn,
                         "n_tokens": len(ids), "n_trained": window.n_trained, "text": window.text,
                         "input_ids": ids, "labels": labels})
    check.flush()
    write_table(rows, schemas.TOKENIZED, out / "tokenized.parquet")
    # The held-out samples with their turns, for generations in eval_report.
    write_table([s for s in samples if splits[s["thread_key"]] == "eval"], schemas.SAMPLES,
                out / "eval_samples.parquet")
    (out / "dropped.json").write_text(json.dumps(dropped, indent=1, sort_keys=True))
    per_split = Counter(r["split"] for r in rows)
    tokens = Counter()
    for r in rows:
        tokens[r["split"]] += r["n_tokens"]
        tokens[r["split"] + "_trained"] += r["n_trained"]
    threads = Counter(splits.values())
    metrics = {
        "rows": len(rows),
        "format": fmt.name,
        "train_rows": per_split["train"],
        "eval_rows": per_split["eval"],
        "train_threads": threads["train"],
        "eval_threads": threads["eval"],
        "train_tokens": tokens["train"],
        "train_trained_tokens": tokens["train_trained"],
        "eval_tokens": tokens["eval"],
        "eval_trained_tokens": tokens["eval_trained"],
        "max_tokens": max((r["n_tokens"] for r in rows), default=0),
        "windows_over_samples": round(len(rows) / max(len(samples), 1), 3),
        "dropped_turns": len(dropped),
        "cross_dump_duplicates": len(duplicates),
        "bad_bos_rows": bad_bos,
        "bad_label_rows": bad_labels,
        "over_length_rows": too_long,
        "label_policy": policy,
        "masked_turn_check": ("checked" if masked_check else
                              "vacuous: label policy 'all' trains every token, user and system turns included"),
        "masked_turn_leak_rows": check.rows,
        "masked_turn_leak_tokens": check.tokens,
        "masked_turn_unchecked_rows": check.unchecked,
    }
    markdown = {
        "dropped_reasons": md_table(sorted(Counter(d["reason"] for d in dropped).items()), ["reason", "turns"]),
        "token_length_histogram": markdown_image(length_histogram_png([r["n_tokens"] for r in rows],
                                                                      settings.max_length), "tokens per row"),
        "preview": "```text\n" + (rows[0]["text"][:1500] if rows else "") + "\n```",
    }
    return TokenizeResult(metrics, markdown)
