"""The `augmented_prompts` stage as a plain streaming function: kept threads -> `samples.parquet`.

A batch of threads at a time, in worker processes or here; what grows with the dump is its handle sets (the
privacy check). Every sample is
checked for forum handles and for model turns of the character the dump marks as human.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from gcrp_assets.lib import schemas
from gcrp_assets.lib.clean.parallel import (batch_count, can_send, numbered_batches, ordered_map,
                                            read_part, unit_rows, worker_count, write_part)
from gcrp_assets.lib.clean.privacy import HandleScrubber
from gcrp_assets.lib.parquet import BATCH_ROWS, ArrowBatchWriter
from gcrp_assets.lib.prompts.samples import PromptOptions, build_samples, human_turns_trained
from gcrp_assets.lib.prompts.sheets import SheetRewriter, SheetTemplate, normalize_sheet
from gcrp_assets.lib.clean.stage import raw_scrubber
from gcrp_assets.lib.tables import LISTED_REJECTS


# ---------------------------------------------------------------------------------------------------
# augmented_prompts
# ---------------------------------------------------------------------------------------------------
def sample_texts(sample: dict) -> list[str]:
    """Every text column of a sample: what the privacy check scans."""
    texts = [sample["system"], sample["user_character"], sample["sheets"], sample.get("name_map") or ""]
    for turn in sample["turns"]:
        texts += [turn["text"], turn.get("name") or ""]
    return texts


@dataclass
class _AugmentBatch:
    """One batch of filtered threads to samples (in a worker process or in this one): the samples go to a work file
    named by the batch's first row (results waiting to be merged in order then hold a path, not the samples), the
    counts of the privacy and human-turn checks come back."""
    sheet_template: SheetTemplate
    system_template: object
    options: PromptOptions
    sheet_rewriter: SheetRewriter
    scrubber: HandleScrubber
    work: Path

    def __call__(self, item: tuple[int, pa.RecordBatch]) -> dict:
        first, batch = item
        roles: Counter[str] = Counter()
        ooc_user_turns = threads_with_human = 0
        leaks: list[str] = []
        human_trained: list[str] = []
        samples: list[dict] = []
        for thread in batch.to_pylist():
            human = thread.get("human")
            threads_with_human += bool(human)
            aliases = {a: c["name"] for c in thread["characters"] for a in c.get("aliases") or []}
            for sample in build_samples(thread, self.sheet_template, self.system_template, options=self.options,
                                        sheet_rewriter=self.sheet_rewriter):
                if human_turns_trained(sample, aliases.get(human, human), aliases):
                    human_trained.append(sample["sample_id"])
                samples.append(sample)
                for turn in sample["turns"]:
                    roles[turn["role"]] += 1
                    ooc_user_turns += turn["role"] == "user" and not turn["name"]
                if self.scrubber.find("\n".join(sample_texts(sample))):
                    leaks.append(sample["sample_id"])
        return {"threads": batch.num_rows,
                "samples": write_part(self.work / f"samples-{first:012d}.arrow", samples, schemas.SAMPLES),
                "example": samples[0]["system"] if samples else None, "roles": roles,
                "ooc_user_turns": ooc_user_turns, "threads_with_human": threads_with_human, "leaks": leaks,
                "human_trained": human_trained}


def run_augmented(filtered_path: Path, raw_path: Path, folder: Path, sheet_template: SheetTemplate,
                  system_template, options: PromptOptions = PromptOptions(),
                  sheet_rewriter: SheetRewriter = normalize_sheet, batch: int = BATCH_ROWS,
                  authors_are_characters: bool = False, workers: int = 1) -> dict:
    """filtered_threads' `threads.parquet` -> `samples.parquet` (SAMPLES) in `folder`, `batch` threads at a time,
    in `workers` processes (`clean.parallel.ordered_map`: 0 = every usable core, 1 = this process; with a sheet
    rewriter other than the rules, `normalize_sheet`, such as the LLM rewriter with its model and counts, everything
    runs here). Results are written in thread order, so the file and the counts are the same for any `workers`.

    Every sample's text columns are scanned for every handle of the dump (from `raw_path`, raw_threads'
    handle columns only) as it is written: `samples_with_handle_leaks` must be 0. Every sample is also
    checked against its thread's `human` (the character the dump marks as the human user's):
    `samples_training_human_turns` (samples with a model turn spoken by that character) must be 0.
    """
    scrubber = raw_scrubber(raw_path, batch, authors_are_characters)
    roles: Counter[str] = Counter()
    threads = ooc_user_turns = threads_with_human = 0
    leaks: list[str] = []
    human_trained: list[str] = []
    example = None
    samples = ArrowBatchWriter(folder / "samples.parquet", schemas.SAMPLES, batch)
    try:
        with tempfile.TemporaryDirectory(prefix=".work-", dir=folder) as work:
            job = _AugmentBatch(sheet_template, system_template, options, sheet_rewriter, scrubber, Path(work))
            # Only the rule-based sheets go to workers: the LLM rewriter holds one model and keeps its counts here.
            parallel = sheet_rewriter is normalize_sheet and can_send(job)
            processes = worker_count(workers, batch_count(filtered_path, batch)) if parallel else 1
            items = numbered_batches(filtered_path, unit_rows(batch, processes))
            for result in ordered_map(job, items, processes):
                if result["samples"] is not None:
                    samples.write(read_part(result["samples"]))
                    result["samples"].unlink()
                threads += result["threads"]
                roles.update(result["roles"])
                ooc_user_turns += result["ooc_user_turns"]
                threads_with_human += result["threads_with_human"]
                leaks += result["leaks"]
                human_trained += result["human_trained"]
                example = result["example"] if example is None else example
    except BaseException:
        samples.abort()
        raise
    n = samples.close()
    return {"samples": n, "threads": threads, "samples_per_thread": round(n / max(threads, 1), 3),
            "user_turns": roles["user"], "model_turns": roles["model"], "ooc_user_turns": ooc_user_turns,
            "samples_with_handle_leaks": len(leaks), "handle_leaks": sorted(leaks)[:LISTED_REJECTS],
            "threads_with_marked_human": threads_with_human, "samples_training_human_turns": len(human_trained),
            "human_trained_samples": sorted(human_trained)[:LISTED_REJECTS],
            "system_prompt_example": example or ""}
