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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gcrp_assets.lib import schemas
from gcrp_assets.lib.clean.cleaning import (HANDLE_COLUMNS, CleaningOptions, clean_thread, dump_handles_arrow,
                                            ic_turns)
from gcrp_assets.lib.clean.dedup import DedupConfig, Duplicate, SignatureStore, Signer, signatures_array
from gcrp_assets.lib.clean.filters import FilterRules, raw_rejection_reason, rejection_reason
from gcrp_assets.lib.parquet import BATCH_ROWS, ArrowBatchWriter, RowWriter, iter_rows
from gcrp_assets.lib.clean.parallel import (batch_count, can_send, numbered_batches, ordered_map,
                                            read_part, unit_rows, worker_count, write_part)
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


# The facts pass 3 needs about a candidate (the kept-threads summary), computed by the worker that cleaned it and
# carried in the candidates work file next to the thread.
_FACTS = [pa.field("_ic_turns", pa.int64()), pa.field("_ooc_turns", pa.int64()), pa.field("_n_characters", pa.int64()),
          pa.field("_has_human", pa.bool_()), pa.field("_handle_leak", pa.bool_()),
          pa.field("_preview_character", pa.string()), pa.field("_preview_text", pa.string())]
_CANDIDATE_PART = pa.schema([*_CANDIDATE_SCHEMA, *_FACTS])
_SEEN = ("posts", "n_unattributed_posts", "n_narrator_posts", "n_reasoning_blocks")


@dataclass
class _FilterBatch:
    """Pass 2 for one batch of raw threads (in a worker process or in this one): each thread checked, cleaned,
    checked by the content policy and filtered; the rejects and the candidates go to work files named by the
    batch's first row, the candidates' dedup signatures and the counts come back."""
    scrubber: HandleScrubber
    rules: FilterRules
    options: CleaningOptions
    policy: Callable[[dict], object | None] | None
    signer: Signer | None
    work: Path

    def __call__(self, item: tuple[int, pa.RecordBatch]) -> dict:
        first, batch = item
        reasons: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        rejects, candidates, keys, signatures = [], [], [], []
        for seq, thread in enumerate(batch.to_pylist(), start=first):
            seen["posts"] += len(thread["posts"])
            verdict = raw_rejection_reason(thread, self.rules)
            evidence = None
            may_leak: list[str] = []
            if not verdict:
                cleaned = clean_thread(thread, self.scrubber, self.options, may_leak)
                for counter in _SEEN[1:]:
                    seen[counter] += cleaned[counter]
                # The content policy first, so that a thread it catches is recorded as such even when another
                # filter would also drop it.
                violation = self.policy(cleaned) if self.policy is not None else None
                if violation is not None:
                    verdict, evidence = (violation.reason, violation.detail), violation.evidence
                else:
                    verdict = rejection_reason(cleaned, self.rules)
            if verdict:
                reasons[verdict[0]] += 1
                rejects.append({**filter_reject(thread, *verdict, evidence=evidence), "seq": seq})
                continue
            if self.signer is not None:
                keys.append((str(thread["dump"]), str(thread["thread_id"])))
                signatures.append(self.signer.sign(cleaned))
            candidates.append({**cleaned, "seq": seq, **_facts(cleaned, self.scrubber, may_leak)})
        name = f"{first:012d}.arrow"
        return {"threads": batch.num_rows, "reasons": reasons, "seen": seen, "keys": keys,
                "signatures": signatures_array(signatures, self.signer) if self.signer is not None else None,
                "rejects": write_part(self.work / f"rejects-{name}", rejects, _SEQ_REJECTS),
                "candidates": write_part(self.work / f"candidates-{name}", candidates, _CANDIDATE_PART)}


def _facts(thread: dict, scrubber: HandleScrubber, may_leak: list[str]) -> dict:
    """`may_leak`: the texts that `clean_thread` scrubbed and that could still hold a handle; the thread's texts
    among them are checked for handles (the others cannot hold one, see `HandleScrubber.scrub`)."""
    ic = ic_turns(thread)
    texts = [turn["text"] for turn in thread["turns"]] + [c["sheet"] or "" for c in thread["characters"]]
    texts.append(thread["title"] or "")
    suspects = set(may_leak)
    texts = [text for text in texts if text in suspects]
    return {"_ic_turns": len(ic), "_ooc_turns": len(thread["turns"]) - len(ic),
            "_n_characters": len(thread["characters"]), "_has_human": bool(thread.get("human")),
            # one scan; the newline keeps every text's word boundaries
            "_handle_leak": bool(texts) and bool(scrubber.find("\n".join(texts))),
            "_preview_character": ic[0]["character"] if ic else None,
            "_preview_text": clip(ic[0]["text"], 140) if ic else None}


def run_filtered(raw_path: Path, folder: Path, rules: FilterRules = FilterRules(),
                 options: CleaningOptions = CleaningOptions(), dedup: DedupConfig = DedupConfig(),
                 batch: int = BATCH_ROWS, policy: Callable[[dict], object | None] | None = None,
                 workers: int = 1) -> dict:
    """raw_threads' `threads.parquet` -> kept `threads.parquet` (FILTERED_THREADS) + `rejects.parquet` in `folder`.

    Passes: (1) the dump's handles (scrubber); (2) each batch of `batch` raw threads, in `workers` processes
    (`parallel.ordered_map`; 0 = every usable core, 1 = this process): each thread checked for what needs no
    cleaning (`raw_rejection_reason`), cleaned (`clean_thread`), checked by the content policy when `policy` is
    given (a picklable callable returning None or an object with `reason`, `detail` and `evidence`, e.g.
    `content_policy.check_thread` bound to a loaded policy), then filtered (`rejection_reason`); rejects and
    candidates go to work files, the candidates' dedup signatures (MinHash computed in the worker) come back and
    are added to a `SignatureStore` in dump order (MinHash rows spilled to disk); then `resolve` names the exact
    and near duplicates (earliest thread_id kept), in this process, over the whole dump; (3) the candidates that
    are no duplicate are written, counted and checked for handle leaks (facts the workers computed); the
    duplicates' raw threads are read back (only the row groups holding them) as rejects. The rejects file is the
    filter rejects and the duplicate rejects merged in dump order. Results are merged in batch order, so the
    outputs and counts are byte-identical for any `workers`.
    """
    scrubber = raw_scrubber(raw_path, batch, options.authors_are_characters)
    sign = dedup.dedup_exact or dedup.dedup_near
    reasons: Counter[str] = Counter()
    seen: Counter[str] = Counter()  # over every thread read, kept or not
    n_in = 0
    kept = ArrowBatchWriter(folder / "threads.parquet", schemas.FILTERED_THREADS, batch)
    rejects = RowWriter(folder / "rejects.parquet", schemas.REJECTS, batch)
    with tempfile.TemporaryDirectory(prefix=".work-", dir=folder) as work_dir:
        work = Path(work_dir)
        store = SignatureStore(dedup, spill_dir=work) if sign else None
        job = _FilterBatch(scrubber, rules, options, policy, store.signer if store is not None else None, work)
        processes = worker_count(workers, batch_count(raw_path, batch)) if can_send(job) else 1
        parts: list[tuple[Path | None, Path | None]] = []
        try:
            items = numbered_batches(raw_path, unit_rows(batch, processes))
            for result in ordered_map(job, items, processes):  # pass 2
                n_in += result["threads"]
                reasons.update(result["reasons"])
                seen.update(result["seen"])
                if store is not None:
                    store.add_signed(result["keys"], result["signatures"])
                parts.append((result["rejects"], result["candidates"]))
            duplicates: dict[str, Duplicate] = {d.thread_id: d for d in store.resolve()} if store is not None else {}
        finally:
            if store is not None:
                store.close()

        summary = _KeptSummary()
        dup_seq: dict[str, int] = {}
        duplicate_ids = pa.array(sorted(duplicates), pa.string())
        try:
            for _, candidates in parts:  # pass 3
                if candidates is None:
                    continue
                table = read_part(candidates)
                is_duplicate = pc.is_in(table.column("thread_id"), value_set=duplicate_ids)
                if duplicates and pc.any(is_duplicate).as_py():
                    dropped = table.filter(is_duplicate).select(["thread_id", "seq"]).to_pylist()
                    for row in dropped:
                        dup_seq[row["thread_id"]] = row["seq"]
                        reasons[duplicates[row["thread_id"]].reason] += 1
                    table = table.filter(pc.invert(is_duplicate))
                kept.write(table)
                summary.add(table)
            with RowWriter(work / "duplicate_rejects.parquet", _SEQ_REJECTS, batch) as dup_rejects:
                for thread in _raw_rows_of(raw_path, set(dup_seq)):
                    duplicate = duplicates[thread["thread_id"]]
                    dup_rejects.add({**filter_reject(thread, duplicate.reason, duplicate.detail),
                                     "seq": dup_seq[thread["thread_id"]]})
            filter_rejects = (row for path, _ in parts if path is not None for row in read_part(path).to_pylist())
            merged = heapq.merge(filter_rejects, iter_rows(work / "duplicate_rejects.parquet", batch=batch),
                                 key=lambda r: r["seq"])
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
    """Counts over the kept threads, a preview of the first ones, and handle leaks, from the candidates' facts
    (`_facts`), one table of kept threads at a time."""

    def __init__(self):
        self.totals: Counter[str] = Counter()
        self.characters: Counter[int] = Counter()
        self.leaks: list[str] = []
        self.preview: list[tuple] = []

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        columns = {"turns": "_ic_turns", "ooc_turns": "_ooc_turns", "unattributed_posts": "n_unattributed_posts",
                   "ooc_remarks_removed": "n_ooc_remarks", "posts_with_ooc": "n_posts_with_ooc",
                   "empty_posts": "n_empty_posts", "threads_with_marked_human": "_has_human"}
        for total, column in columns.items():
            values = table.column(column)
            if pa.types.is_boolean(values.type):
                values = pc.cast(values, pa.int64())
            self.totals[total] += pc.sum(values).as_py() or 0
        self.characters.update(table.column("_n_characters").to_pylist())
        leaking = table.filter(table.column("_handle_leak")).select(["dump", "thread_id"]).to_pylist()
        self.leaks += [f"{row['dump']}/{row['thread_id']}" for row in leaking]
        if len(self.preview) < 8:
            head = table.filter(pc.is_valid(table.column("_preview_text"))).slice(0, 8 - len(self.preview))
            self.preview += [(r["thread_id"], r["_preview_character"], r["_preview_text"])
                             for r in head.select(["thread_id", "_preview_character", "_preview_text"]).to_pylist()]

    def stats(self) -> dict:
        keys = ("turns", "ooc_turns", "unattributed_posts", "ooc_remarks_removed", "posts_with_ooc", "empty_posts",
                "threads_with_marked_human")
        return {**{k: self.totals[k] for k in keys}, "threads_with_handle_leaks": len(self.leaks),
                "handle_leaks": self.leaks[:LISTED_REJECTS], "characters_per_thread": sorted(self.characters.items()),
                "preview": self.preview}
