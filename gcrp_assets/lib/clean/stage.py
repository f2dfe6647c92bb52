"""The `filtered_threads` stage as a plain streaming function: raw threads -> kept threads + rejects.

What grows with the dump (everything else is one batch): the dump's handle and character-name sets (the
scrubber; one pass over only those Parquet columns), the dedup index (`dedup.SignatureStore`: 8 bytes per
thread + 8 per LSH band, the thread key; the MinHash rows spilled to a file) and the duplicates found.
`raw_scrubber` is shared with the `augmented_prompts` stage (its privacy check).
"""

from __future__ import annotations

import heapq
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gcrp_assets.lib import schemas
from gcrp_assets.lib.clean.cleaning import (HANDLE_COLUMNS, CleaningOptions, clean_thread, dump_handles_arrow,
                                            ic_turns)
from gcrp_assets.lib.clean.dedup import DedupConfig, Duplicate, SignatureStore
from gcrp_assets.lib.clean.filters import FilterRules, raw_rejection_reason, rejection_reason
from gcrp_assets.lib.parquet import BATCH_ROWS, RowWriter, iter_rows
from gcrp_assets.lib.clean.privacy import HandleScrubber
from gcrp_assets.lib.tables import clip
from gcrp_assets.lib.tables import LISTED_REJECTS


# ---------------------------------------------------------------------------------------------------
# filtered_threads
# ---------------------------------------------------------------------------------------------------
def reject_json(thread: dict) -> str:
    return json.dumps(thread, ensure_ascii=False, sort_keys=True, default=str)


def filter_reject(thread: dict, reason: str, detail: str, evidence: list[str] | None = None) -> dict:
    """A rejects row of filtered_threads: the raw thread kept whole, with its reason code (and, for a content
    rule, what it matched)."""
    dump = thread["dump"]
    where = f"{dump}/{thread['file']}" if thread["file"] != dump else dump
    return {"dump": dump, "file": thread["file"], "line": thread["line"], "thread_id": thread["thread_id"],
            "stage": "filtered_threads", "reason": reason,
            "detail": f"{where}:{thread['line']}: thread {thread['thread_id']}: {detail}",
            "record": reject_json(thread),
            "evidence": json.dumps(evidence, ensure_ascii=False) if evidence else None}


def raw_scrubber(raw_path: Path, batch: int = BATCH_ROWS, authors_are_characters: bool = False) -> HandleScrubber:
    """Every handle of the dump (post authors, character players; character names protected), read from
    raw_threads' handle and name columns only, so the post texts are never loaded. With
    `authors_are_characters` (attribution mode `author`) the authors are character names, not handles."""
    batches = pq.ParquetFile(raw_path).iter_batches(batch_size=batch * 8, columns=HANDLE_COLUMNS)
    handles, names = dump_handles_arrow(batches, authors_are_characters)
    return HandleScrubber(handles, protected_names=names)


# Work files carry the raw thread's position (`seq`) so that rejects come out in dump order; a thread is found
# again by its thread_id, which raw_threads keeps unique within the dump (`(file, line)` alone is not:
# every chat file of a SillyTavern export has its own line 1).
_SEQ = pa.field("seq", pa.int64())


_CANDIDATE_SCHEMA = schemas.FILTERED_THREADS.append(_SEQ)


_SEQ_REJECTS = schemas.REJECTS.append(_SEQ)


def _raw_rows_of(raw_path: Path, thread_ids: set[str]) -> Iterator[dict]:
    """The raw threads whose `thread_id` is in `thread_ids`, in file order, reading only the row groups holding them."""
    if not thread_ids:
        return
    raw = pq.ParquetFile(raw_path)
    wanted = pa.array(sorted(thread_ids), pa.string())
    for group in range(raw.metadata.num_row_groups):
        mask = pc.is_in(raw.read_row_group(group, columns=["thread_id"]).column("thread_id"), value_set=wanted)
        if pc.any(mask).as_py():
            yield from raw.read_row_group(group).filter(mask).to_pylist()


def run_filtered(raw_path: Path, folder: Path, rules: FilterRules = FilterRules(),
                 options: CleaningOptions = CleaningOptions(), dedup: DedupConfig = DedupConfig(),
                 batch: int = BATCH_ROWS, policy: Callable[[dict], object | None] | None = None) -> dict:
    """raw_threads' `threads.parquet` -> kept `threads.parquet` (FILTERED_THREADS) + `rejects.parquet` in `folder`.

    Passes: (1) the dump's handles (scrubber); (2) each raw thread checked for what needs no cleaning
    (`raw_rejection_reason`), cleaned (`clean_thread`), checked by the content policy when `policy` is given
    (a callable returning None or an object with `reason`, `detail` and `evidence`, e.g.
    `content_policy.check_thread` bound to a loaded policy), then filtered (`rejection_reason`): a reject is written at once, a candidate goes to a temporary Parquet file and its dedup
    signature to a `SignatureStore` (MinHash rows spilled to disk); then `resolve` names the exact and near
    duplicates (earliest thread_id kept); (3) the candidates that are no duplicate are written, counted and
    checked for handle leaks; the duplicates' raw threads are read back (only the row groups holding them)
    as rejects. The rejects file is the filter rejects and the duplicate rejects merged in dump order.
    """
    scrubber = raw_scrubber(raw_path, batch, options.authors_are_characters)
    sign = dedup.dedup_exact or dedup.dedup_near
    reasons: Counter[str] = Counter()
    seen: Counter[str] = Counter()  # over every thread read, kept or not
    n_in = 0
    kept = RowWriter(folder / "threads.parquet", schemas.FILTERED_THREADS, batch)
    rejects = RowWriter(folder / "rejects.parquet", schemas.REJECTS, batch)
    with tempfile.TemporaryDirectory(prefix=".work-", dir=folder) as work_dir:
        work = Path(work_dir)
        store = SignatureStore(dedup, spill_dir=work) if sign else None
        try:
            with RowWriter(work / "filter_rejects.parquet", _SEQ_REJECTS, batch) as filter_rejects, \
                    RowWriter(work / "candidates.parquet", _CANDIDATE_SCHEMA, batch) as candidates:
                for seq, thread in enumerate(iter_rows(raw_path, batch=batch)):  # pass 2
                    n_in += 1
                    seen["posts"] += len(thread["posts"])
                    verdict = raw_rejection_reason(thread, rules)
                    evidence = None
                    if not verdict:
                        cleaned = clean_thread(thread, scrubber, options)
                        for counter in ("n_unattributed_posts", "n_narrator_posts", "n_reasoning_blocks"):
                            seen[counter] += cleaned[counter]
                        # The content policy first, so that a thread it catches is recorded as such even
                        # when another filter would also drop it.
                        violation = policy(cleaned) if policy is not None else None
                        if violation is not None:
                            verdict, evidence = (violation.reason, violation.detail), violation.evidence
                        else:
                            verdict = rejection_reason(cleaned, rules)
                    if verdict:
                        reasons[verdict[0]] += 1
                        filter_rejects.add({**filter_reject(thread, *verdict, evidence=evidence), "seq": seq})
                        continue
                    if store is not None:
                        store.add(thread["dump"], thread["thread_id"], cleaned)
                    candidates.add({**cleaned, "seq": seq})
            duplicates: dict[str, Duplicate] = {d.thread_id: d for d in store.resolve()} if store else {}
        finally:
            if store is not None:
                store.close()

        summary = _KeptSummary(scrubber)
        dup_seq: dict[str, int] = {}
        try:
            for row in iter_rows(work / "candidates.parquet", batch=batch):  # pass 3
                seq = row.pop("seq")
                duplicate = duplicates.get(row["thread_id"])
                if duplicate is not None:
                    dup_seq[row["thread_id"]] = seq
                    reasons[duplicate.reason] += 1
                    continue
                kept.add(row)
                summary.add(row)
            with RowWriter(work / "duplicate_rejects.parquet", _SEQ_REJECTS, batch) as dup_rejects:
                for thread in _raw_rows_of(raw_path, set(dup_seq)):
                    duplicate = duplicates[thread["thread_id"]]
                    dup_rejects.add({**filter_reject(thread, duplicate.reason, duplicate.detail),
                                     "seq": dup_seq[thread["thread_id"]]})
            merged = heapq.merge(iter_rows(work / "filter_rejects.parquet", batch=batch),
                                 iter_rows(work / "duplicate_rejects.parquet", batch=batch), key=lambda r: r["seq"])
            rejects.extend({k: v for k, v in row.items() if k != "seq"} for row in merged)
        except BaseException:
            kept.abort()
            rejects.abort()
            raise
    n_kept, n_rejected = kept.close(), rejects.close()
    return {"threads_in": n_in, "threads_kept": n_kept, "threads_rejected": n_rejected, "reasons": dict(reasons),
            "posts_in": seen["posts"], "unattributed_posts_all": seen["n_unattributed_posts"],
            "narrator_posts": seen["n_narrator_posts"], "reasoning_blocks_removed": seen["n_reasoning_blocks"],
            **summary.stats()}


class _KeptSummary:
    """Counts over the kept threads, a preview of the first ones, and handle leaks, one thread at a time."""

    def __init__(self, scrubber: HandleScrubber):
        self.scrubber = scrubber
        self.totals: Counter[str] = Counter()
        self.characters: Counter[int] = Counter()
        self.leaks: list[str] = []
        self.preview: list[tuple] = []

    def add(self, thread: dict) -> None:
        ic = ic_turns(thread)
        t = self.totals
        t["turns"] += len(ic)
        t["ooc_turns"] += len(thread["turns"]) - len(ic)
        t["unattributed_posts"] += thread["n_unattributed_posts"]
        t["ooc_remarks_removed"] += thread["n_ooc_remarks"]
        t["posts_with_ooc"] += thread["n_posts_with_ooc"]
        t["empty_posts"] += thread["n_empty_posts"]
        self.characters[len(thread["characters"])] += 1
        t["threads_with_marked_human"] += bool(thread.get("human"))
        texts = [turn["text"] for turn in thread["turns"]] + [c["sheet"] or "" for c in thread["characters"]]
        texts.append(thread["title"] or "")
        if self.scrubber.find("\n".join(texts)):  # one scan; the newline keeps every text's word boundaries
            self.leaks.append(f"{thread['dump']}/{thread['thread_id']}")
        if len(self.preview) < 8 and ic:
            self.preview.append((thread["thread_id"], ic[0]["character"], clip(ic[0]["text"], 140)))

    def stats(self) -> dict:
        keys = ("turns", "ooc_turns", "unattributed_posts", "ooc_remarks_removed", "posts_with_ooc", "empty_posts",
                "threads_with_marked_human")
        return {**{k: self.totals[k] for k in keys}, "threads_with_handle_leaks": len(self.leaks),
                "handle_leaks": self.leaks[:LISTED_REJECTS], "characters_per_thread": sorted(self.characters.items()),
                "preview": self.preview}
