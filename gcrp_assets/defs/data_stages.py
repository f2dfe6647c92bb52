"""Data stages per dump: raw_threads -> filtered_threads -> augmented_prompts.

Each asset is a thin Dagster layer over a streaming stage function (`lib.ingest.stage.run_raw`,
`lib.clean.stage.run_filtered`, `lib.prompts.stage.run_augmented`), the same functions `benchmarks/data_stages.py` measures:
input read a batch at a time, outputs written incrementally with fixed Parquet writer options.
"""


import json
from collections import Counter
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import NamedTuple

import dagster as dg

from gcrp_assets.orchestration.artifacts import Upstream, build_or_reuse, code_version, upstream
from gcrp_assets.defs.automation import follow_upstream_data
from gcrp_assets.orchestration.configs import FilterConfig, PromptConfig, RawConfig
from gcrp_assets.orchestration.partitions import dumps
from gcrp_assets.orchestration.resources import ArtifactStore, DumpInbox
from gcrp_assets.orchestration.settings import settings_from
from gcrp_assets.lib.clean.cleaning import CleaningOptions
from gcrp_assets.lib.clean.content_policy import PolicyConfig, check_thread, load_policy
from gcrp_assets.lib.clean.dedup import DedupConfig
from gcrp_assets.lib.ingest.contract import DumpReadError
from gcrp_assets.lib.ingest.dumps import dump_digest
from gcrp_assets.lib.clean.filters import REASONS, FilterRules
from gcrp_assets.lib.hashing import sha256_file
from gcrp_assets.lib.prompts.samples import PromptOptions, load_system_template
from gcrp_assets.lib.training.base_model import model_dir_hash
from gcrp_assets.lib.prompts.sheet_rewrite import LLMSheetRewriter, RewriteSettings
from gcrp_assets.lib.prompts.sheets import SheetRewriter, SheetTemplate, normalize_sheet
from gcrp_assets.lib.tables import LISTED_REJECTS
from gcrp_assets.lib.prompts.stage import run_augmented
from gcrp_assets.lib.clean.stage import run_filtered
from gcrp_assets.lib.ingest.stage import RawSettings, run_raw
from gcrp_assets.lib.tables import md_table

# One module defines the three data stages, so they share its code closure (`lib.code_closure`).
DATA_STAGES_CODE = code_version(__name__)


@dg.asset(
    group_name="data", kinds={"parquet"}, code_version=DATA_STAGES_CODE, partitions_def=dumps,
    check_specs=[dg.AssetCheckSpec("lines_accounted_for", asset="raw_threads", blocking=True,
                                   description="Every record of the dump is a thread or a reject."),
                 dg.AssetCheckSpec("dump_not_empty", asset="raw_threads", blocking=False,
                                   description="The dump yielded at least one thread (an empty dump is allowed "
                                               "but said).")],
)
def raw_threads(context: dg.AssetExecutionContext, config: RawConfig, inbox: DumpInbox,
                store: ArtifactStore) -> dg.MaterializeResult:
    """One dump (this partition) read into the canonical thread table, whatever its layout (canonical thread
    JSONL, CSV/TSV/Parquet post table, SillyTavern export folder, recognised by content); malformed records go
    to rejects with file and line. A dump that cannot be read at all fails the run with an error naming it."""
    dump = context.partition_key
    path = inbox.dump_path(dump)  # a name in the inbox, never a path out of it (lib.inbox)
    inputs = {"code": DATA_STAGES_CODE, "config": config.model_dump(), "dump": dump,
              "dump_sha256": dump_digest(path, inbox=inbox.folder())}

    def build(folder: Path) -> dict:
        try:
            m = run_raw(path, folder, on_reject=lambda r: context.log.warning(f"rejected {r['detail']}"),
                        max_record_bytes=settings_from(config, RawSettings).max_record_bytes)
        except DumpReadError as exc:
            raise dg.Failure(str(exc)) from exc
        more = m["rejected_lines"] - len(m["rejects_listed"])
        listing = md_table(m["rejects_listed"], ["dump", "line", "reason", "detail"])
        if more > 0:
            listing += f"\n\n… and {more} more in rejects.parquet (the first {LISTED_REJECTS} are listed)"
        return {
            "dagster/row_count": m["threads"],
            "dump": dump,
            "layout": m["layout"],
            "lines": m["lines"],
            "records_read": m["records_read"],
            "ooc_rows": m["ooc_rows"],
            "system_messages": m["system_messages"],
            "threads": m["threads"],
            "rejected_lines": m["rejected_lines"],
            "posts": m["posts"],
            "rejects": dg.MetadataValue.md(listing),
            "preview": dg.MetadataValue.md(md_table(m["preview"], ["thread_id", "title", "characters", "posts"])),
            **({"warning": f"dump {dump!r} yielded no thread ({m['lines']} records read)"} if not m["threads"] else {}),
        }

    built = build_or_reuse(context, lambda fp: store.dir_for("raw_threads", fp, dump), inputs, build,
                           checks=raw_checks)
    if not built.metadata["threads"]:
        context.log.warning(built.metadata.get("warning", f"dump {dump!r} yielded no thread"))
    return built.result()


def raw_checks(m: dict) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(check_name="lines_accounted_for", passed=m["threads"] + m["rejected_lines"] == m["lines"],
                            metadata={"lines": m["lines"], "threads": m["threads"], "rejected_lines": m["rejected_lines"]}),
        dg.AssetCheckResult(check_name="dump_not_empty", passed=m["threads"] > 0, severity=dg.AssetCheckSeverity.WARN,
                            metadata={"threads": m["threads"], "records": m["lines"]}),
    ]


class FilterSettings(NamedTuple):
    """What filtered_threads runs with: the plain settings objects its `FilterConfig` is made of."""
    rules: FilterRules
    cleaning: CleaningOptions
    dedup: DedupConfig
    policy: PolicyConfig


def filter_settings(config: FilterConfig) -> FilterSettings:
    return FilterSettings(settings_from(config, FilterRules), settings_from(config, CleaningOptions),
                          settings_from(config, DedupConfig), settings_from(config, PolicyConfig))


# The duplicate settings a filtered_threads materialization ran with, in its metadata and (copied) in the
# metadata of the augmented_prompts built from it, so that tokenized_parquet drops duplicates across dumps
# with the same settings (`cross_dump_dedup`).
DEDUP_SETTINGS = "dedup_settings"


def dedup_record(dedup: DedupConfig) -> str:
    return json.dumps(asdict(dedup), sort_keys=True)


def cross_dump_dedup(samples: dict[str, Upstream]) -> DedupConfig:
    """The duplicate settings for duplicates across dumps: those the dumps' filtered_threads ran with, read from
    each dump's augmented_prompts materialization (`samples`: dump -> upstream). Dumps filtered with different
    settings fail the run (re-materialize filtered_threads with one setting); samples built before the settings
    were recorded count as filtered with the defaults."""
    recorded = {dump: up.metadata.get(DEDUP_SETTINGS) or dedup_record(DedupConfig()) for dump, up in samples.items()}
    if len(set(recorded.values())) > 1:
        listing = "; ".join(f"{dump}: {settings}" for dump, settings in sorted(recorded.items()))
        raise dg.Failure("the dumps were filtered with different duplicate settings, so duplicates across them "
                         f"cannot be decided with one: {listing}. Re-materialize filtered_threads (and what "
                         "follows) with the same dedup settings for every dump.")
    return DedupConfig(**json.loads(next(iter(recorded.values())))) if recorded else DedupConfig()


@dg.asset(
    group_name="data", kinds={"parquet"}, code_version=DATA_STAGES_CODE, deps=[raw_threads], partitions_def=dumps,
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
    rules, options, dedup, policy_config = filter_settings(config)
    try:
        policy = load_policy(policy_config)
    except (OSError, ValueError) as exc:
        raise dg.Failure(f"content_policy_rules: {exc}") from exc
    rules_path = policy_config.content_policy_rules
    rules_file = {rules_path: sha256_file(Path(rules_path))} if rules_path else {}
    # `workers` changes how fast, not what: left out of the fingerprint (the outputs are byte-identical).
    inputs = {"code": DATA_STAGES_CODE, "config": config.model_dump(exclude={"workers"}),
              "content_policy_rules": rules_file, "raw_threads": raw.data_version}

    def build(folder: Path) -> dict:
        m = run_filtered(raw.path / "threads.parquet", folder, rules, options, dedup,
                         policy=partial(check_thread, policy=policy) if policy_config.content_policy else None,
                         workers=options.workers)
        reasons = Counter(m["reasons"])
        for leak in m["handle_leaks"]:
            context.log.error(f"forum handle left in kept thread {leak}")
        funnel = [("read", m["threads_in"], "threads in the raw dump"), ("kept", m["threads_kept"], "")]
        funnel += [(r, reasons[r], REASONS[r]) for r in REASONS]
        return {
            "dagster/row_count": m["threads_kept"],
            "threads_in": m["threads_in"],
            "threads_kept": m["threads_kept"],
            "threads_rejected": m["threads_rejected"],
            "turns": m["turns"],
            "ooc_policy": config.ooc_policy,
            "ooc_turns": m["ooc_turns"],
            "attribution": config.attribution,
            "posts_in": m["posts_in"],
            "unattributed_posts": m["unattributed_posts"],
            "unattributed_posts_all_threads": m["unattributed_posts_all"],
            "narrator_posts": m["narrator_posts"],
            "narrator_policy": config.narrator_policy,
            "reasoning_blocks_removed": m["reasoning_blocks_removed"],
            "threads_with_marked_human": m["threads_with_marked_human"],
            "minor_sexual_content": reasons["minor_sexual_content"],
            "ooc_remarks_removed": m["ooc_remarks_removed"],
            "posts_with_ooc": m["posts_with_ooc"],
            "empty_posts": m["empty_posts"],
            "exact_duplicates": reasons["exact_duplicate"],
            "near_duplicates": reasons["near_duplicate"],
            DEDUP_SETTINGS: dedup_record(dedup),
            "threads_with_handle_leaks": m["threads_with_handle_leaks"],
            "reasons": dg.MetadataValue.md(md_table(funnel, ["outcome", "threads", "meaning"])),
            "characters_per_thread": dg.MetadataValue.md(md_table(m["characters_per_thread"],
                                                                  ["characters", "threads"])),
            "preview": dg.MetadataValue.md(md_table(m["preview"], ["thread_id", "first speaker", "first turn"])),
        }

    built = build_or_reuse(context, lambda fp: store.dir_for("filtered_threads", fp, dump), inputs, build,
                           checks=filtered_checks)
    return built.result()


def filtered_checks(m: dict) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(check_name="threads_accounted_for",
                            passed=m["threads_kept"] + m["threads_rejected"] == m["threads_in"],
                            metadata={"in": m["threads_in"], "kept": m["threads_kept"], "rejected": m["threads_rejected"]}),
        dg.AssetCheckResult(check_name="no_forum_handles", passed=m["threads_with_handle_leaks"] == 0,
                            metadata={"threads_with_handle_leaks": m["threads_with_handle_leaks"]}),
    ]


def sheet_rewriter(context: dg.AssetExecutionContext, config: PromptConfig,
                   store: ArtifactStore) -> tuple[SheetRewriter, dict | None]:
    """The sheet rewriter the config asks for, and what it adds to the fingerprint.

    Off (the default): the rules (`sheets.normalize_sheet`), nothing added. On: `LLMSheetRewriter` with
    the model in `sheet_rewrite_model`, else the base_model asset's latest directory (materialize
    base_model first); its model hash, prompt version and settings join the fingerprint, and its cache
    lives under `<artifact root>/sheet_rewrites/`.
    """
    if not config.sheet_rewrite:
        return normalize_sheet, None
    if config.sheet_rewrite_model:
        model_dir = Path(config.sheet_rewrite_model).expanduser().resolve()
        if not (model_dir / "config.json").is_file():
            raise dg.Failure(f"sheet_rewrite_model {model_dir}: not a Hugging Face model directory (no config.json)")
        model_hash = model_dir_hash(model_dir)
    else:
        base = upstream(context, "base_model")
        model_dir, model_hash = base.path, base.data_version
    settings = settings_from(config, RewriteSettings)
    cache = Path(store.root).expanduser().resolve() / "sheet_rewrites"
    rewriter = LLMSheetRewriter(model_dir, cache, model_hash=model_hash, settings=settings)
    return rewriter, rewriter.fingerprint()


@dg.asset(group_name="data", kinds={"parquet"}, code_version=DATA_STAGES_CODE, deps=[filtered_threads],
          partitions_def=dumps, automation_condition=follow_upstream_data(),
          check_specs=[dg.AssetCheckSpec("no_forum_handles", asset="augmented_prompts", blocking=True,
                                         description="No forum handle of the dump appears in any text column of "
                                                     "any sample (system prompt, sheets, turn names and texts)."),
                       dg.AssetCheckSpec("no_human_turns_trained", asset="augmented_prompts", blocking=True,
                                         description="No sample has a model turn spoken by the character the dump "
                                                     "marks as the human user's (SillyTavern is_user).")])
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
    options = settings_from(config, PromptOptions)
    rewriter, rewriter_inputs = sheet_rewriter(context, config, store)
    template_files = {p: sha256_file(Path(p)) for p in (config.sheet_template, config.system_prompt_template) if p}
    inputs = {"code": DATA_STAGES_CODE, "config": config.model_dump(exclude={"workers"}), "templates": template_files,
              "sheet_rewriter": rewriter_inputs,
              "filtered_threads": filtered.data_version, "raw_threads_handles": raw.data_version}

    def build(folder: Path) -> dict:
        sheet_template = SheetTemplate.load(config.sheet_template or None)
        system_template = load_system_template(config.system_prompt_template or None)
        m = run_augmented(filtered.path / "threads.parquet", raw.path / "threads.parquet", folder, sheet_template,
                          system_template, options, sheet_rewriter=rewriter,
                          authors_are_characters=filtered.metadata.get("attribution") == "author",
                          workers=options.workers)
        for sample_id in m["human_trained_samples"]:
            context.log.error(f"sample {sample_id} trains turns of the character the dump marks as human")
        for leak in m["handle_leaks"]:
            context.log.error(f"forum handle left in sample {leak}")
        metadata = {
            "dagster/row_count": m["samples"],
            "samples": m["samples"],
            "threads": m["threads"],
            "user_character": config.user_character,
            "names": config.names,
            # the duplicate settings of the filtered_threads these samples come from, for tokenized_parquet
            DEDUP_SETTINGS: filtered.metadata.get(DEDUP_SETTINGS) or dedup_record(DedupConfig()),
            "samples_per_thread": m["samples_per_thread"],
            "user_turns": m["user_turns"],
            "model_turns": m["model_turns"],
            "ooc_user_turns": m["ooc_user_turns"],
            "samples_with_handle_leaks": m["samples_with_handle_leaks"],
            "threads_with_marked_human": m["threads_with_marked_human"],
            "samples_training_human_turns": m["samples_training_human_turns"],
            "system_prompt_example": dg.MetadataValue.md(f"```text\n{m['system_prompt_example']}\n```"),
        }
        if isinstance(rewriter, LLMSheetRewriter):
            stats = rewriter.stats
            metadata.update({"sheet_rewrite_model_hash": rewriter.model_hash,
                             "sheets_rule_parsed": stats["rule_parsed"],
                             "sheets_rewrite_attempts": stats["rewrite_attempts"],
                             "sheets_rewritten": stats["rewritten"],
                             "sheet_rewrite_fallbacks": stats["fallbacks"],
                             "sheet_rewrite_cache_hits": stats["cache_hits"],
                             "sheet_rewrite_generated": stats["generated"],
                             "sheet_rewrite_values_dropped": stats["values_dropped"]})
        return metadata

    built = build_or_reuse(context, lambda fp: store.dir_for("augmented_prompts", fp, dump), inputs, build,
                           checks=augmented_checks)
    return built.result()


def augmented_checks(m: dict) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(check_name="no_forum_handles", passed=m["samples_with_handle_leaks"] == 0,
                            metadata={"samples_with_handle_leaks": m["samples_with_handle_leaks"]}),
        dg.AssetCheckResult(check_name="no_human_turns_trained", passed=m["samples_training_human_turns"] == 0,
                            metadata={"samples_training_human_turns": m["samples_training_human_turns"],
                                      "threads_with_marked_human": m["threads_with_marked_human"]}),
    ]
