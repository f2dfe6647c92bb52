"""Data stages per dump: raw_threads -> filtered_threads -> augmented_prompts.

Each asset is a thin Dagster layer over a streaming stage function of `gcrp_assets.lib.stages`
(`run_raw`, `run_filtered`, `run_augmented`), the same functions `benchmarks/data_stages.py` measures:
input read a batch at a time, outputs written incrementally with fixed Parquet writer options.
"""


from collections import Counter
from pathlib import Path

import dagster as dg

from gcrp_assets.defs.artifacts import build_or_reuse, code_version, upstream
from gcrp_assets.defs.automation import follow_upstream_data
from gcrp_assets.defs.configs import FilterConfig, PromptConfig
from gcrp_assets.defs.partitions import dumps
from gcrp_assets.defs.resources import ArtifactStore, DumpInbox
from gcrp_assets.lib.cleaning import CleaningOptions
from gcrp_assets.lib.dedup import DedupConfig
from gcrp_assets.lib.dumps import DumpReadError, dump_digest
from gcrp_assets.lib.filters import REASONS, FilterRules
from gcrp_assets.lib.hashing import sha256_file
from gcrp_assets.lib.prompts import PromptOptions, load_system_template
from gcrp_assets.lib.base_model import model_dir_hash
from gcrp_assets.lib.sheet_rewrite import LLMSheetRewriter, RewriteSettings
from gcrp_assets.lib.sheets import SheetRewriter, SheetTemplate, normalize_sheet
from gcrp_assets.lib.stages import LISTED_REJECTS, run_augmented, run_filtered, run_raw, sample_texts  # noqa: F401
from gcrp_assets.lib.tables import md_table

RAW_CODE = code_version("lib/dumps.py", "lib/importers/*.py", "lib/schemas.py", "lib/parquet.py", "lib/stages.py")
FILTER_CODE = code_version("lib/markup.py", "lib/ooc.py", "lib/attribution.py", "lib/privacy.py",
                           "lib/cleaning.py", "lib/filters.py", "lib/language.py", "lib/dedup.py", "lib/schemas.py",
                           "lib/parquet.py", "lib/stages.py")
PROMPT_CODE = code_version("lib/sheets.py", "lib/sheet_rewrite.py", "lib/prompts.py", "templates/*",
                           "lib/privacy.py", "lib/schemas.py", "lib/parquet.py", "lib/stages.py")


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
            m = run_raw(path, folder, on_reject=lambda r: context.log.warning(f"rejected {r['detail']}"))
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
            "system_messages_skipped": m["system_messages_skipped"],
            "threads": m["threads"],
            "rejected_lines": m["rejected_lines"],
            "posts": m["posts"],
            "rejects": dg.MetadataValue.md(listing),
            "preview": dg.MetadataValue.md(md_table(m["preview"], ["thread_id", "title", "characters", "posts"])),
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
        m = run_filtered(raw.path / "threads.parquet", folder, rules, options, dedup)
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
            "unattributed_posts": m["unattributed_posts"],
            "ooc_remarks_removed": m["ooc_remarks_removed"],
            "posts_with_ooc": m["posts_with_ooc"],
            "empty_posts": m["empty_posts"],
            "exact_duplicates": reasons["exact_duplicate"],
            "near_duplicates": reasons["near_duplicate"],
            "threads_with_handle_leaks": m["threads_with_handle_leaks"],
            "reasons": dg.MetadataValue.md(md_table(funnel, ["outcome", "threads", "meaning"])),
            "characters_per_thread": dg.MetadataValue.md(md_table(m["characters_per_thread"],
                                                                  ["characters", "threads"])),
            "preview": dg.MetadataValue.md(md_table(m["preview"], ["thread_id", "first speaker", "first turn"])),
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
    settings = RewriteSettings(min_fields=config.sheet_rewrite_min_fields,
                               min_support=config.sheet_rewrite_min_support,
                               max_new_tokens=config.sheet_rewrite_max_new_tokens)
    cache = Path(store.root).expanduser().resolve() / "sheet_rewrites"
    rewriter = LLMSheetRewriter(model_dir, cache, model_hash=model_hash, settings=settings)
    return rewriter, rewriter.fingerprint()


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
    rewriter, rewriter_inputs = sheet_rewriter(context, config, store)
    template_files = {p: sha256_file(Path(p)) for p in (config.sheet_template, config.system_prompt_template) if p}
    inputs = {"code": PROMPT_CODE, "config": config.model_dump(), "templates": template_files,
              "sheet_rewriter": rewriter_inputs,
              "filtered_threads": filtered.data_version, "raw_threads_handles": raw.data_version}

    def build(folder: Path) -> dict:
        sheet_template = SheetTemplate.load(config.sheet_template or None)
        system_template = load_system_template(config.system_prompt_template or None)
        m = run_augmented(filtered.path / "threads.parquet", raw.path / "threads.parquet", folder, sheet_template,
                          system_template, options, sheet_rewriter=rewriter)
        for leak in m["handle_leaks"]:
            context.log.error(f"forum handle left in sample {leak}")
        metadata = {
            "dagster/row_count": m["samples"],
            "samples": m["samples"],
            "threads": m["threads"],
            "user_character": config.user_character,
            "names": config.names,
            "samples_per_thread": m["samples_per_thread"],
            "user_turns": m["user_turns"],
            "model_turns": m["model_turns"],
            "ooc_user_turns": m["ooc_user_turns"],
            "samples_with_handle_leaks": m["samples_with_handle_leaks"],
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

    built = build_or_reuse(context, lambda fp: store.dir_for("augmented_prompts", fp, dump), inputs, build)
    leaks = built.metadata["samples_with_handle_leaks"]
    return built.result([dg.AssetCheckResult(check_name="no_forum_handles", passed=leaks == 0,
                                             metadata={"samples_with_handle_leaks": leaks})])
