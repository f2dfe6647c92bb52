"""Data stages per dump: raw_threads -> filtered_threads -> augmented_prompts."""


import json
from collections import Counter
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from gcrp_assets.defs.artifacts import build_or_reuse, code_version, upstream
from gcrp_assets.defs.automation import follow_upstream_data
from gcrp_assets.defs.configs import FilterConfig, PromptConfig
from gcrp_assets.defs.partitions import dumps
from gcrp_assets.defs.resources import ArtifactStore, DumpInbox
from gcrp_assets.lib import schemas
from gcrp_assets.lib.cleaning import (HANDLE_COLUMNS, CleaningOptions, clean_thread, dump_handles_arrow,
                                     dump_scrubber, ic_turns)
from gcrp_assets.lib.dedup import DedupConfig, find_duplicates
from gcrp_assets.lib.dumps import DumpReadError, dump_digest, read_dump
from gcrp_assets.lib.filters import REASONS, FilterRules, rejection_reason
from gcrp_assets.lib.hashing import sha256_file
from gcrp_assets.lib.parquet import read_rows, write_table
from gcrp_assets.lib.privacy import HandleScrubber
from gcrp_assets.lib.prompts import PromptOptions, build_samples, load_system_template
from gcrp_assets.lib.sheets import SheetTemplate
from gcrp_assets.lib.tables import clip, md_table

RAW_CODE = code_version("lib/dumps.py", "lib/importers/*.py", "lib/schemas.py", "lib/parquet.py")
FILTER_CODE = code_version("lib/markup.py", "lib/ooc.py", "lib/attribution.py", "lib/privacy.py",
                           "lib/cleaning.py", "lib/filters.py", "lib/language.py", "lib/dedup.py", "lib/schemas.py")
PROMPT_CODE = code_version("lib/sheets.py", "lib/prompts.py", "templates/*", "lib/privacy.py", "lib/schemas.py")


def _reject_json(thread: dict) -> str:
    return json.dumps(thread, ensure_ascii=False, sort_keys=True, default=str)


@dg.asset(
    group_name="data", kinds={"parquet"}, code_version=RAW_CODE, partitions_def=dumps,
    check_specs=[dg.AssetCheckSpec("lines_accounted_for", asset="raw_threads", blocking=True,
                                   description="Every non-blank line of the dump is a thread or a reject.")],
)
def raw_threads(context: dg.AssetExecutionContext, inbox: DumpInbox, store: ArtifactStore) -> dg.MaterializeResult:
    """One dump (this partition) read into the canonical thread table, whatever its layout (canonical thread
    JSONL, CSV/TSV/Parquet post table, SillyTavern export folder, recognised by content); malformed records go
    to rejects with file and line. A dump that cannot be read at all fails the run with an error naming it."""
    dump = context.partition_key
    path = inbox.folder() / dump
    if not path.exists():
        raise dg.Failure(f"{path}: dump {dump!r} is no longer in the inbox")
    inputs = {"code": RAW_CODE, "dump": dump, "dump_sha256": dump_digest(path)}

    def build(folder: Path) -> dict:
        try:
            contents = read_dump(path)
        except DumpReadError as exc:
            raise dg.Failure(str(exc)) from exc
        for reject in contents.rejects:
            context.log.warning(f"rejected {reject['detail']}")
        threads, rejects = contents.threads, contents.rejects
        write_table(threads, schemas.RAW_THREADS, folder / "threads.parquet")
        write_table(rejects, schemas.REJECTS, folder / "rejects.parquet")
        return {
            "dagster/row_count": len(threads),
            "dump": dump,
            "layout": contents.layout,
            "lines": contents.lines,
            "records_read": contents.rows,
            "ooc_rows": contents.ooc_rows,
            "system_messages_skipped": contents.system_messages,
            "threads": len(threads),
            "rejected_lines": len(rejects),
            "posts": sum(len(t["posts"]) for t in threads),
            "rejects": dg.MetadataValue.md(md_table(((r["dump"], r["line"], r["reason"], clip(r["detail"], 120))
                                                     for r in rejects), ["dump", "line", "reason", "detail"])),
            "preview": dg.MetadataValue.md(md_table(
                ((t["thread_id"], clip(t["title"], 40), len(t["characters"]), len(t["posts"]))
                 for t in threads[:10]), ["thread_id", "title", "characters", "posts"])),
        }

    built = build_or_reuse(context, lambda fp: store.dir_for("raw_threads", fp, dump), inputs, build)
    m = built.metadata
    passed = m["threads"] + m["rejected_lines"] == m["lines"]
    return built.result([dg.AssetCheckResult(check_name="lines_accounted_for", passed=passed,
                                             metadata={"lines": m["lines"], "threads": m["threads"],
                                                       "rejected_lines": m["rejected_lines"]})])


def filter_rules(config: FilterConfig) -> FilterRules:
    return FilterRules(min_turns=config.min_turns, min_characters=config.min_characters,
                       max_characters=config.max_characters, max_post_chars=config.max_post_chars,
                       max_unattributed_share=config.max_unattributed_share, max_ooc_share=config.max_ooc_share,
                       language=config.language, min_language_score=config.min_language_score)


def cleaning_options(config: FilterConfig) -> CleaningOptions:
    return CleaningOptions(drop_unattributed=config.drop_unattributed, ooc_policy=config.ooc_policy,
                           min_post_chars=config.min_post_chars)


def dedup_config(config: FilterConfig) -> DedupConfig:
    return DedupConfig(exact=config.dedup_exact, near=config.dedup_near, threshold=config.near_duplicate_threshold,
                       shingle_words=config.shingle_words, num_perm=config.minhash_permutations)


def _filter_reject(dump: str, thread: dict, reason: str, detail: str) -> dict:
    return {"dump": dump, "line": thread["line"], "thread_id": thread["thread_id"], "stage": "filtered_threads",
            "reason": reason, "detail": f"{dump}:{thread['line']}: thread {thread['thread_id']}: {detail}",
            "record": _reject_json(thread)}


@dg.asset(
    group_name="data", kinds={"parquet"}, code_version=FILTER_CODE, deps=[raw_threads], partitions_def=dumps,
    automation_condition=follow_upstream_data(),
    check_specs=[
        dg.AssetCheckSpec("threads_accounted_for", asset="filtered_threads", blocking=True,
                          description="kept + rejected = threads in."),
        dg.AssetCheckSpec("no_forum_handles", asset="filtered_threads", blocking=True,
                          description="No forum handle appears in any kept text."),
    ],
)
def filtered_threads(context: dg.AssetExecutionContext, config: FilterConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """Threads cleaned to plain text (quotes, links, images, signatures, `RE:` lines, @-mentions and mojibake
    out), attributed to characters, OOC handled by `ooc_policy`, forum handles scrubbed, then filtered.

    Kept: at least `min_turns` turns, `min_characters`..`max_characters` speaking characters, no post over
    `max_post_chars`, at most `max_unattributed_share` unattributed and `max_ooc_share` OOC posts, English
    when `language` is 'en', and not an exact or near duplicate of an earlier thread (by thread_id) of the
    same dump. Every dropped thread is kept whole in `rejects.parquet` with its reason code; the `reasons`
    metadata is the funnel. Duplicates across dumps: `lib.dedup.drop_cross_dump_duplicates`.
    """
    dump = context.partition_key
    raw = upstream(context, "raw_threads", dump)
    rules, options, dedup = filter_rules(config), cleaning_options(config), dedup_config(config)
    inputs = {"code": FILTER_CODE, "config": config.model_dump(), "raw_threads": raw.data_version}

    def build(folder: Path) -> dict:
        threads = read_rows(raw.path / "threads.parquet")
        candidates, rejects, handle_hits = [], [], []
        reasons: Counter[str] = Counter()
        scrubber = dump_scrubber(threads)  # every handle of the dump, not only the thread's own
        for thread in threads:
            cleaned = clean_thread(thread, scrubber, options)
            verdict = rejection_reason(cleaned, rules)
            if verdict:
                reasons[verdict[0]] += 1
                rejects.append(_filter_reject(dump, thread, *verdict))
            else:
                candidates.append((thread, cleaned))
        duplicates = {d.key: d for d in find_duplicates([c for _, c in candidates], dedup)}
        kept = []
        for thread, cleaned in candidates:
            duplicate = duplicates.get((dump, thread["thread_id"]))
            if duplicate:
                reasons[duplicate.reason] += 1
                rejects.append(_filter_reject(dump, thread, duplicate.reason, duplicate.detail))
                continue
            texts = [t["text"] for t in cleaned["turns"]] + [c["sheet"] or "" for c in cleaned["characters"]]
            texts.append(cleaned["title"] or "")
            if any(scrubber.find(text) for text in texts):
                handle_hits.append(f"{dump}/{thread['thread_id']}")
            kept.append(cleaned)
        rejects.sort(key=lambda r: r["line"])
        write_table(kept, schemas.FILTERED_THREADS, folder / "threads.parquet")
        write_table(rejects, schemas.REJECTS, folder / "rejects.parquet")
        funnel = [("read", len(threads), "threads in the raw dump"), ("kept", len(kept), "")]
        funnel += [(r, reasons[r], REASONS[r]) for r in REASONS]
        turns = [len(ic_turns(t)) for t in kept]
        return {
            "dagster/row_count": len(kept),
            "threads_in": len(threads),
            "threads_kept": len(kept),
            "threads_rejected": len(rejects),
            "turns": sum(turns),
            "ooc_policy": config.ooc_policy,
            "ooc_turns": sum(len(t["turns"]) - n for t, n in zip(kept, turns)),
            "unattributed_posts": sum(t["n_unattributed_posts"] for t in kept),
            "ooc_remarks_removed": sum(t["n_ooc_remarks"] for t in kept),
            "posts_with_ooc": sum(t["n_posts_with_ooc"] for t in kept),
            "empty_posts": sum(t["n_empty_posts"] for t in kept),
            "exact_duplicates": reasons["exact_duplicate"],
            "near_duplicates": reasons["near_duplicate"],
            "threads_with_handle_leaks": len(handle_hits),
            "reasons": dg.MetadataValue.md(md_table(funnel, ["outcome", "threads", "meaning"])),
            "characters_per_thread": dg.MetadataValue.md(md_table(
                sorted(Counter(len(t["characters"]) for t in kept).items()), ["characters", "threads"])),
            "preview": dg.MetadataValue.md(md_table(
                ((t["thread_id"], ic_turns(t)[0]["character"], clip(ic_turns(t)[0]["text"], 140)) for t in kept[:8]),
                ["thread_id", "first speaker", "first turn"])),
        }

    built = build_or_reuse(context, lambda fp: store.dir_for("filtered_threads", fp, dump), inputs, build)
    m = built.metadata
    return built.result([
        dg.AssetCheckResult(check_name="threads_accounted_for",
                            passed=m["threads_kept"] + m["threads_rejected"] == m["threads_in"],
                            metadata={"in": m["threads_in"], "kept": m["threads_kept"], "rejected": m["threads_rejected"]}),
        dg.AssetCheckResult(check_name="no_forum_handles", passed=m["threads_with_handle_leaks"] == 0,
                            metadata={"threads_with_handle_leaks": m["threads_with_handle_leaks"]}),
    ])


def sample_texts(sample: dict) -> list[str]:
    """Every text column of a sample: what the privacy check scans."""
    texts = [sample["system"], sample["user_character"], sample["sheets"], sample.get("name_map") or ""]
    for turn in sample["turns"]:
        texts += [turn["text"], turn.get("name") or ""]
    return texts


def _raw_handles(path: Path) -> HandleScrubber:
    """The dump's handles (post authors, character players), read from raw_threads (only those columns)."""
    return HandleScrubber(*dump_handles_arrow(pq.ParquetFile(path).iter_batches(columns=HANDLE_COLUMNS)))


@dg.asset(group_name="data", kinds={"parquet"}, code_version=PROMPT_CODE, deps=[filtered_threads],
          partitions_def=dumps, automation_condition=follow_upstream_data(),
          check_specs=[dg.AssetCheckSpec("no_forum_handles", asset="augmented_prompts", blocking=True,
                                         description="No forum handle of the dump appears in any text column of "
                                                     "any sample (system prompt, sheets, turn names and texts).")])
def augmented_prompts(context: dg.AssetExecutionContext, config: PromptConfig,
                      store: ArtifactStore) -> dg.MaterializeResult:
    """Training samples: each character sheet rewritten into the uniform template, a system prompt naming the
    human user's character and listing the others, and the turns as `user` / `model` with speaker names
    (real, or `{user}`/`{charN}` placeholders with `name_map`). `user_character` picks the human's character:
    the starter, each character in turn (variants share the thread_key), or a seeded random one. The privacy
    check scans every text column for every handle of the dump, read from this dump's raw_threads."""
    dump = context.partition_key
    filtered = upstream(context, "filtered_threads", dump)
    raw = upstream(context, "raw_threads", dump)  # only for the privacy check's list of handles
    options = PromptOptions(user_character=config.user_character, max_variants=config.max_variants,
                            seed=config.seed, names=config.names)
    template_files = {p: sha256_file(Path(p)) for p in (config.sheet_template, config.system_prompt_template) if p}
    inputs = {"code": PROMPT_CODE, "config": config.model_dump(), "templates": template_files,
              "filtered_threads": filtered.data_version, "raw_threads_handles": raw.data_version}

    def build(folder: Path) -> dict:
        sheet_template = SheetTemplate.load(config.sheet_template or None)
        system_template = load_system_template(config.system_prompt_template or None)
        samples = []
        threads = 0
        for thread in read_rows(filtered.path / "threads.parquet"):
            threads += 1
            samples += build_samples(thread, sheet_template, system_template, options=options)
        write_table(samples, schemas.SAMPLES, folder / "samples.parquet")
        scrubber = _raw_handles(raw.path / "threads.parquet")
        leaks = sorted(s["sample_id"] for s in samples if any(scrubber.find(t) for t in sample_texts(s)))
        roles = Counter(t["role"] for s in samples for t in s["turns"])
        example = samples[0]["system"] if samples else ""
        return {
            "dagster/row_count": len(samples),
            "samples": len(samples),
            "threads": threads,
            "user_character": config.user_character,
            "names": config.names,
            "samples_per_thread": round(len(samples) / max(threads, 1), 3),
            "user_turns": roles["user"],
            "model_turns": roles["model"],
            "ooc_user_turns": sum(1 for s in samples for t in s["turns"] if t["role"] == "user" and not t["name"]),
            "samples_with_handle_leaks": len(leaks),
            "system_prompt_example": dg.MetadataValue.md(f"```text\n{example}\n```"),
        }

    built = build_or_reuse(context, lambda fp: store.dir_for("augmented_prompts", fp, dump), inputs, build)
    leaks = built.metadata["samples_with_handle_leaks"]
    return built.result([dg.AssetCheckResult(check_name="no_forum_handles", passed=leaks == 0,
                                             metadata={"samples_with_handle_leaks": leaks})])
