"""The optional LLM rewrite of sheets the rules cannot parse: off by default, cached, inventing nothing."""

from __future__ import annotations

import pytest

from gcrp_assets.lib.prompts.sheet_rewrite import (CausalLMGenerator, LLMSheetRewriter, RewriteSettings,
                                                   build_messages, cannot_parse, support, words)
from gcrp_assets.lib.prompts.sheets import SheetTemplate, normalize_sheet, parse_sheet

TEMPLATE = SheetTemplate.load()
PROSE = ("Mira is a nineteen year old elf who works as a courier in the river city. She has silver hair "
         "and a scar over her left eye. She grew up in an orphanage and ran away at twelve.")
LABELLED = "Name: Mira Vell\nAge: 19\nRace: Elf\nOccupation: Courier"


class FakeGenerator:
    """Stands in for the model: records calls, returns a fixed text."""

    def __init__(self, output: str):
        self.output, self.calls = output, 0

    def render(self, messages):
        return "\n".join(m["content"] for m in messages)

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        return self.output


class Exploding(FakeGenerator):
    def __call__(self, prompt: str) -> str:
        raise AssertionError("the model must not run on a cache hit")


def rewriter(tmp_path, generator, **settings) -> LLMSheetRewriter:
    return LLMSheetRewriter(tmp_path / "model", tmp_path / "cache", model_hash="m1",
                            settings=RewriteSettings(**settings), generator=generator)


def test_off_by_default_the_rules_rewrite_sheets():
    from gcrp_assets.orchestration.configs import PromptConfig
    from gcrp_assets.defs.data_stages import sheet_rewriter

    config = PromptConfig()
    assert config.sheet_rewrite is False
    rewrite, fingerprint = sheet_rewriter(None, config, None)  # off: neither context nor store is touched
    assert rewrite is normalize_sheet and fingerprint is None


def test_cannot_parse_means_too_few_template_fields():
    assert cannot_parse(PROSE, parse_sheet(PROSE, TEMPLATE, "Mira"), TEMPLATE, 2)
    assert not cannot_parse(LABELLED, parse_sheet(LABELLED, TEMPLATE, "Mira Vell"), TEMPLATE, 2)
    assert not cannot_parse("", {}, TEMPLATE, 2) and not cannot_parse(None, {}, TEMPLATE, 2)  # nothing to rewrite


def test_parseable_sheets_never_reach_the_model(tmp_path):
    generator = FakeGenerator("Age: 99")
    rewrite = rewriter(tmp_path, generator)
    assert rewrite("Mira Vell", LABELLED, TEMPLATE) == normalize_sheet("Mira Vell", LABELLED, TEMPLATE)
    assert rewrite("Mira Vell", None, TEMPLATE) == normalize_sheet("Mira Vell", None, TEMPLATE)
    assert generator.calls == 0 and rewrite.stats["rule_parsed"] == 2


def test_rewrite_keeps_supported_values_drops_invented_ones_and_is_cached(tmp_path):
    output = ("Character Name: Mira the Bold\nAge: nineteen\nRace: elf\nOccupation: courier in the river city\n"
              "Appearance: silver hair, a scar over her left eye\nBiography: grew up in an orphanage, ran away at twelve\n"
              "Equipment: enchanted longsword of dragonfire, mithril armour")
    generator = FakeGenerator(output)
    rewrite = rewriter(tmp_path, generator)
    sheet = rewrite("Mira", PROSE, TEMPLATE)
    assert generator.calls == 1 and rewrite.stats["rewritten"] == 1 and rewrite.stats["generated"] == 1
    assert "**Character Name**: Mira\n" in sheet  # the display name, never the model's
    assert "**Age**: nineteen" in sheet and "**Race**: elf" in sheet and "courier in the river city" in sheet
    assert "silver hair" in sheet and "orphanage" in sheet
    assert "longsword" not in sheet and "mithril" not in sheet and "Bold" not in sheet  # not in the sheet: dropped
    assert rewrite.stats["values_dropped"] == 2  # Equipment, and the name line parse_sheet filed under Other
    assert set(words(sheet)) <= set(words(PROSE)) | set(words("Mira")) | {w for f in TEMPLATE.fields
                                                                          for w in words(f.name)}
    cached = list((tmp_path / "cache").rglob("*.json"))
    assert len(cached) == 1
    assert cached[0].stem == rewrite.cache_key("Mira", PROSE, build_messages("Mira", PROSE, TEMPLATE))

    again = rewriter(tmp_path, Exploding(""))  # a new process: same cache folder, model must not run
    assert again("Mira", PROSE, TEMPLATE) == sheet and again.stats["cache_hits"] == 1
    other_model = LLMSheetRewriter(tmp_path / "model", tmp_path / "cache", model_hash="m2",
                                   generator=FakeGenerator(output))
    other_model("Mira", PROSE, TEMPLATE)
    assert other_model.stats["generated"] == 1  # another model (or prompt, or settings) is another key
    longer = rewriter(tmp_path, FakeGenerator(output), sheet_rewrite_max_new_tokens=10)
    longer("Mira", PROSE, TEMPLATE)
    assert longer.stats["generated"] == 1


def test_unsupported_or_useless_rewrites_fall_back_to_the_rules(tmp_path):
    invented = rewriter(tmp_path / "a", FakeGenerator("Age: 400\nRace: dragon\nOccupation: pirate queen"))
    assert invented("Mira", PROSE, TEMPLATE) == normalize_sheet("Mira", PROSE, TEMPLATE)
    assert invented.stats["fallbacks"] == 1 and invented.stats["values_dropped"] == 3
    chatter = rewriter(tmp_path / "b", FakeGenerator("I am sorry, I cannot help with that."))
    assert chatter("Mira", PROSE, TEMPLATE) == normalize_sheet("Mira", PROSE, TEMPLATE)
    assert chatter.stats["fallbacks"] == 1


def test_support_counts_words_with_repetition():
    source = set(words(PROSE))
    assert support("silver hair", source) == 1.0
    assert support("silver hair, golden crown", source) == 0.5
    assert support("", source) == 1.0


def test_tiny_model_greedy_cached_and_never_loaded_on_a_hit(tmp_path, tiny_model_dir):
    settings = RewriteSettings(sheet_rewrite_max_new_tokens=12)
    first = LLMSheetRewriter(tiny_model_dir, tmp_path / "cache", settings=settings)
    assert len(first.model_hash) == 24
    sheet = first("Mira", PROSE, TEMPLATE)
    assert first.stats["generated"] == 1 and first.generator.calls == 1
    # Random weights write no supported template field: the rules' result stands.
    assert sheet == normalize_sheet("Mira", PROSE, TEMPLATE) and first.stats["fallbacks"] == 1
    raw = first.raw_rewrite("Mira", PROSE, TEMPLATE)  # now a cache hit

    second = LLMSheetRewriter(tiny_model_dir, tmp_path / "cache", settings=settings)
    assert second("Mira", PROSE, TEMPLATE) == sheet
    assert second.stats["cache_hits"] == 1 and second.generator.model is None and second.generator.calls == 0

    fresh = CausalLMGenerator(tiny_model_dir, settings)  # greedy: the same text again without the cache
    assert fresh(fresh.render(build_messages("Mira", PROSE, TEMPLATE))) == raw


def test_prompt_config_settings_reach_the_rewriter(tmp_path, tiny_model_dir):
    from gcrp_assets.orchestration.configs import PromptConfig
    from gcrp_assets.defs.data_stages import sheet_rewriter
    from gcrp_assets.orchestration.resources import ArtifactStore

    config = PromptConfig(sheet_rewrite=True, sheet_rewrite_model=str(tiny_model_dir), sheet_rewrite_min_fields=3,
                          sheet_rewrite_min_support=0.9, sheet_rewrite_max_new_tokens=16)
    rewrite, fingerprint = sheet_rewriter(None, config, ArtifactStore(root=str(tmp_path)))
    assert isinstance(rewrite, LLMSheetRewriter)
    assert rewrite.settings == RewriteSettings(sheet_rewrite_min_fields=3, sheet_rewrite_min_support=0.9,
                                               sheet_rewrite_max_new_tokens=16)
    assert rewrite.cache_dir == tmp_path.resolve() / "sheet_rewrites"
    assert fingerprint["model_hash"] == rewrite.model_hash and fingerprint["settings"]["sheet_rewrite_max_new_tokens"] == 16
    with pytest.raises(Exception, match="not a Hugging Face model directory"):
        sheet_rewriter(None, PromptConfig(sheet_rewrite=True, sheet_rewrite_model=str(tmp_path)),
                       ArtifactStore(root=str(tmp_path)))


def test_augmented_prompts_with_the_rewrite_on_generates_once_then_reads_the_cache(tmp_path, tiny_model_dir):
    """The asset as a user runs it: a dump whose first character has a prose sheet in every thread; with the
    rewrite on, each such sheet goes to the model once; a run with another prompt setting (a new fingerprint,
    the same sheets) takes every rewrite from the cache."""
    import dagster as dg

    from gcrp_assets.orchestration.artifacts import latest_materialization
    from gcrp_assets.orchestration.configs import PromptConfig
    from gcrp_assets.orchestration.resources import ArtifactStore, BaseModelSource, DumpInbox
    from gcrp_assets.definitions import build_defs
    from gcrp_assets_tests.factories import thread, write_jsonl

    records = [thread(f"t{i}", 2, 6) for i in range(3)]
    for index, record in enumerate(records):
        record["characters"][0]["sheet"] = PROSE.replace("twelve", f"{12 + index}")
    write_jsonl(tmp_path / "inbox" / "d.jsonl", records)
    resources = {"inbox": DumpInbox(path=str(tmp_path / "inbox")), "store": ArtifactStore(root=str(tmp_path / "art")),
                 "base": BaseModelSource(hf_model_dir=str(tiny_model_dir)), "pipes": dg.PipesSubprocessClient()}
    settings = {"sheet_rewrite": True, "sheet_rewrite_model": str(tiny_model_dir), "sheet_rewrite_max_new_tokens": 8}
    (tmp_path / "home").mkdir()
    runs = []
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("dumps", ["d.jsonl"])
        job = build_defs(resources).resolve_job_def("dump_stages")
        for config in (PromptConfig(**settings), PromptConfig(names="placeholder", **settings)):
            assert job.execute_in_process(instance=instance, partition_key="d.jsonl",
                                          run_config=dg.RunConfig(ops={"augmented_prompts": config})).success
            event = latest_materialization(instance, "augmented_prompts", "d.jsonl")
            runs.append({k: v.value for k, v in event.metadata.items()})
    first, second = runs
    assert first["dagster/row_count"] == 3 and first["sheets_rewrite_attempts"] == 3
    assert (first["sheet_rewrite_generated"], first["sheet_rewrite_cache_hits"]) == (3, 0)
    assert (second["sheet_rewrite_generated"], second["sheet_rewrite_cache_hits"]) == (0, 3)
    assert first["fingerprint"] != second["fingerprint"] and second["samples_with_handle_leaks"] == 0
