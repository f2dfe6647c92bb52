"""The `augmented_prompts` stage as a plain streaming function: kept threads -> `samples.parquet`.

One thread at a time; what grows with the dump is its handle sets (the privacy check). Every sample is
checked for forum handles and for model turns of the character the dump marks as human.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gcrp_assets.lib import schemas
from gcrp_assets.lib.parquet import BATCH_ROWS, RowWriter, iter_rows
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


def run_augmented(filtered_path: Path, raw_path: Path, folder: Path, sheet_template: SheetTemplate,
                  system_template, options: PromptOptions = PromptOptions(),
                  sheet_rewriter: SheetRewriter = normalize_sheet, batch: int = BATCH_ROWS,
                  authors_are_characters: bool = False) -> dict:
    """filtered_threads' `threads.parquet` -> `samples.parquet` (SAMPLES) in `folder`, one thread at a time.

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
    with RowWriter(folder / "samples.parquet", schemas.SAMPLES, batch) as samples:
        for thread in iter_rows(filtered_path, batch=batch):
            threads += 1
            human = thread.get("human")
            threads_with_human += bool(human)
            aliases = {a: c["name"] for c in thread["characters"] for a in c.get("aliases") or []}
            for sample in build_samples(thread, sheet_template, system_template, options=options,
                                        sheet_rewriter=sheet_rewriter):
                if human_turns_trained(sample, aliases.get(human, human), aliases):
                    human_trained.append(sample["sample_id"])
                samples.add(sample)
                example = sample["system"] if example is None else example
                for turn in sample["turns"]:
                    roles[turn["role"]] += 1
                    ooc_user_turns += turn["role"] == "user" and not turn["name"]
                if scrubber.find("\n".join(sample_texts(sample))):
                    leaks.append(sample["sample_id"])
    n = samples.n
    return {"samples": n, "threads": threads, "samples_per_thread": round(n / max(threads, 1), 3),
            "user_turns": roles["user"], "model_turns": roles["model"], "ooc_user_turns": ooc_user_turns,
            "samples_with_handle_leaks": len(leaks), "handle_leaks": sorted(leaks)[:LISTED_REJECTS],
            "threads_with_marked_human": threads_with_human, "samples_training_human_turns": len(human_trained),
            "human_trained_samples": sorted(human_trained)[:LISTED_REJECTS],
            "system_prompt_example": example or ""}
