"""Data stages: raw_threads -> filtered_threads -> augmented_prompts -> tokenized_parquet."""


import json
from collections import Counter
from pathlib import Path

import dagster as dg

from gcrp_assets.defs.artifacts import build_or_reuse, code_version, latest_materialization, upstream
from gcrp_assets.defs.automation import follow_upstream_data
from gcrp_assets.defs.configs import FilterConfig, PromptConfig, TokenizeConfig
from gcrp_assets.defs.partitions import dumps
from gcrp_assets.defs.resources import ArtifactStore, DumpInbox
from gcrp_assets.lib import schemas
from gcrp_assets.lib.cleaning import CleaningOptions, clean_thread, dump_scrubber
from gcrp_assets.lib.dumps import DumpReadError, dump_digest, read_dump
from gcrp_assets.lib.filters import REASONS, FilterRules, rejection_reason
from gcrp_assets.lib.formats import get_format, render
from gcrp_assets.lib.hashing import sha256_file
from gcrp_assets.lib.parquet import read_rows, write_table
from gcrp_assets.lib.prompts import build_samples, load_system_template
from gcrp_assets.lib.sheets import SheetTemplate
from gcrp_assets.lib.split import assign_splits
from gcrp_assets.lib.tables import clip, md_table
from gcrp_assets.lib.tokenization import IGNORE, tokenize_sample

RAW_CODE = code_version("lib/dumps.py", "lib/importers/*.py", "lib/schemas.py", "lib/parquet.py")
FILTER_CODE = code_version("lib/markup.py", "lib/ooc.py", "lib/attribution.py", "lib/privacy.py",
                           "lib/cleaning.py", "lib/filters.py", "lib/schemas.py")
PROMPT_CODE = code_version("lib/sheets.py", "lib/prompts.py", "templates/*")
TOKENIZE_CODE = code_version("lib/formats.py", "lib/tokenization.py", "lib/split.py")


def selected_dumps(instance: dg.DagsterInstance, requested: list[str]) -> list[str]:
    """The dump partitions that feed the training set: `requested`, or every registered one that has samples."""
    registered = sorted(instance.get_dynamic_partitions(dumps.name))
    if requested:
        unknown = sorted(set(requested) - set(registered))
        if unknown:
            raise dg.Failure(f"unknown dump partitions {unknown}; registered: {registered}")
        return sorted(requested)
    ready = [d for d in registered if latest_materialization(instance, "augmented_prompts", d) is not None]
    if not ready:
        raise dg.Failure("no dump partition has augmented_prompts yet: materialize the data stages first")
    return ready


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
    """Threads cleaned to plain text, attributed to characters, stripped of OOC and forum handles, and filtered.

    Kept: at least `min_turns` turns and `min_characters`..`max_characters` speaking characters.
    Every dropped thread is kept whole in `rejects.parquet` with its reason code.
    """
    dump = context.partition_key
    raw = upstream(context, "raw_threads", dump)
    rules = FilterRules(config.min_turns, config.min_characters, config.max_characters)
    inputs = {"code": FILTER_CODE, "config": config.model_dump(), "raw_threads": raw.data_version}

    def build(folder: Path) -> dict:
        threads = read_rows(raw.path / "threads.parquet")
        kept, rejects, handle_hits = [], [], []
        reasons: Counter[str] = Counter()
        scrubber = dump_scrubber(threads)  # every handle of the dump, not only the thread's own
        for thread in threads:
            cleaned = clean_thread(thread, scrubber, CleaningOptions(drop_unattributed=config.drop_unattributed))
            verdict = rejection_reason(cleaned, rules)
            if verdict:
                reasons[verdict[0]] += 1
                rejects.append({"dump": dump, "line": thread["line"], "thread_id": thread["thread_id"],
                                "stage": "filtered_threads", "reason": verdict[0],
                                "detail": f"{dump}:{thread['line']}: thread {thread['thread_id']}: {verdict[1]}",
                                "record": _reject_json(thread)})
                continue
            texts = [t["text"] for t in cleaned["turns"]] + [c["sheet"] or "" for c in cleaned["characters"]]
            texts.append(cleaned["title"] or "")
            if any(scrubber.find(text) for text in texts):
                handle_hits.append(f"{dump}/{thread['thread_id']}")
            kept.append(cleaned)
        write_table(kept, schemas.FILTERED_THREADS, folder / "threads.parquet")
        write_table(rejects, schemas.REJECTS, folder / "rejects.parquet")
        funnel = [("kept", len(kept), "")] + [(r, reasons[r], REASONS[r]) for r in sorted(reasons)]
        turns = [len(t["turns"]) for t in kept]
        return {
            "dagster/row_count": len(kept),
            "threads_in": len(threads),
            "threads_kept": len(kept),
            "threads_rejected": len(rejects),
            "turns": sum(turns),
            "unattributed_posts": sum(t["n_unattributed_posts"] for t in kept),
            "ooc_remarks_removed": sum(t["n_ooc_remarks"] for t in kept),
            "empty_posts": sum(t["n_empty_posts"] for t in kept),
            "threads_with_handle_leaks": len(handle_hits),
            "reasons": dg.MetadataValue.md(md_table(funnel, ["outcome", "threads", "meaning"])),
            "characters_per_thread": dg.MetadataValue.md(md_table(
                sorted(Counter(len(t["characters"]) for t in kept).items()), ["characters", "threads"])),
            "preview": dg.MetadataValue.md(md_table(
                ((t["thread_id"], t["turns"][0]["character"], clip(t["turns"][0]["text"], 140)) for t in kept[:8]),
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


@dg.asset(group_name="data", kinds={"parquet"}, code_version=PROMPT_CODE, deps=[filtered_threads],
          partitions_def=dumps, automation_condition=follow_upstream_data())
def augmented_prompts(context: dg.AssetExecutionContext, config: PromptConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """Training samples: each character sheet rewritten into the uniform template, a system prompt naming the
    human user's character and listing the others, and the turns as `user` / `model` with speaker names."""
    dump = context.partition_key
    filtered = upstream(context, "filtered_threads", dump)
    template_files = {p: sha256_file(Path(p)) for p in (config.sheet_template, config.system_prompt_template) if p}
    inputs = {"code": PROMPT_CODE, "config": config.model_dump(), "templates": template_files,
              "filtered_threads": filtered.data_version}

    def build(folder: Path) -> dict:
        sheet_template = SheetTemplate.load(config.sheet_template or None)
        system_template = load_system_template(config.system_prompt_template or None)
        samples = []
        for thread in read_rows(filtered.path / "threads.parquet"):
            samples += build_samples(thread, sheet_template, system_template, config.user_character)
        write_table(samples, schemas.SAMPLES, folder / "samples.parquet")
        roles = Counter(t["role"] for s in samples for t in s["turns"])
        example = samples[0]["system"] if samples else ""
        return {
            "dagster/row_count": len(samples),
            "samples": len(samples),
            "user_turns": roles["user"],
            "model_turns": roles["model"],
            "system_prompt_example": dg.MetadataValue.md(f"```text\n{example}\n```"),
        }

    return build_or_reuse(context, lambda fp: store.dir_for("augmented_prompts", fp, dump), inputs, build).result()


@dg.asset(
    group_name="data", kinds={"parquet"}, code_version=TOKENIZE_CODE, deps=[augmented_prompts, "base_model"],
    automation_condition=follow_upstream_data(),
    check_specs=[
        dg.AssetCheckSpec("one_bos_per_sample", asset="tokenized_parquet", blocking=True),
        dg.AssetCheckSpec("labels_are_model_turns", asset="tokenized_parquet", blocking=True,
                          description="Decoding the trained tokens gives exactly the trained spans' text."),
        dg.AssetCheckSpec("within_max_length", asset="tokenized_parquet", blocking=True),
    ],
)
def tokenized_parquet(context: dg.AssetExecutionContext, config: TokenizeConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """The training set: the samples of every dump partition (or of `config.dumps`), rendered in the chosen
    prompt format, tokenized once with the base model's tokenizer, labels masked to model turns (or all text
    for raw-text formats), split into train/eval by thread."""
    partitions = selected_dumps(context.instance, config.dumps)
    samples_up = {dump: upstream(context, "augmented_prompts", dump) for dump in partitions}
    model_up = upstream(context, "base_model")
    fmt = get_format(config.format)
    inputs = {"code": TOKENIZE_CODE, "config": config.model_dump(),
              "augmented_prompts": {dump: up.data_version for dump, up in samples_up.items()},
              "base_model": model_up.data_version}

    def build(folder: Path) -> dict:
        from transformers import AutoTokenizer  # imported here: a reused artifact needs no tokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_up.path)
        samples = [s for dump in partitions for s in read_rows(samples_up[dump].path / "samples.parquet")]
        splits = assign_splits([s["thread_key"] for s in samples], config.eval_fraction,
                               config.min_eval_threads, config.split_seed)
        rows, dropped = [], []
        bad_bos = bad_labels = too_long = 0
        for sample in samples:
            windows, lost = tokenize_sample(sample, fmt, tokenizer, config.max_length)
            dropped += [{"sample_id": d.sample_id, "turn": d.turn, "reason": d.reason, "detail": d.detail} for d in lost]
            for index, window in enumerate(windows):
                ids, labels = window.input_ids, window.labels
                if fmt.add_bos and (ids[0] != tokenizer.bos_token_id or ids[1:2] == [tokenizer.bos_token_id]):
                    bad_bos += 1
                trained = [t for t, l in zip(ids, labels) if l != IGNORE]
                expected = render(sample, fmt, tokenizer.bos_token, (window.first_turn, window.last_turn)).trained_text()
                if tokenizer.decode(trained) != expected:
                    bad_labels += 1
                too_long += len(ids) > config.max_length
                rows.append({"sample_id": sample["sample_id"], "window": index, "thread_key": sample["thread_key"],
                             "split": splits[sample["thread_key"]], "format": fmt.name,
                             "first_turn": window.first_turn, "last_turn": window.last_turn,
                             "n_tokens": len(ids), "n_trained": window.n_trained, "text": window.text,
                             "input_ids": ids, "labels": labels})
        write_table(rows, schemas.TOKENIZED, folder / "tokenized.parquet")
        # The held-out samples with their turns, for generations in eval_report.
        write_table([s for s in samples if splits[s["thread_key"]] == "eval"], schemas.SAMPLES,
                    folder / "eval_samples.parquet")
        (folder / "dropped.json").write_text(json.dumps(dropped, indent=1, sort_keys=True))
        per_split = Counter(r["split"] for r in rows)
        tokens = Counter()
        for r in rows:
            tokens[r["split"]] += r["n_tokens"]
            tokens[r["split"] + "_trained"] += r["n_trained"]
        threads = Counter(splits.values())
        return {
            "dagster/row_count": len(rows),
            "dumps": dg.MetadataValue.json(partitions),
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
            "bad_bos_rows": bad_bos,
            "bad_label_rows": bad_labels,
            "over_length_rows": too_long,
            "preview": dg.MetadataValue.md("```text\n" + (rows[0]["text"][:1500] if rows else "") + "\n```"),
        }

    built = build_or_reuse(context, lambda fp: store.dir_for("tokenized_parquet", fp), inputs, build)
    m = built.metadata
    return built.result([
        dg.AssetCheckResult(check_name="one_bos_per_sample", passed=m["bad_bos_rows"] == 0,
                            metadata={"bad_rows": m["bad_bos_rows"]}),
        dg.AssetCheckResult(check_name="labels_are_model_turns", passed=m["bad_label_rows"] == 0,
                            metadata={"bad_rows": m["bad_label_rows"]}),
        dg.AssetCheckResult(check_name="within_max_length", passed=m["over_length_rows"] == 0,
                            metadata={"rows_over": m["over_length_rows"], "max_tokens": m["max_tokens"]}),
    ])
