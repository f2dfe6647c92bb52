"""One source for every setting: each run config's fields are exactly its plain settings dataclasses' fields
(plus the declared asset-only extras), with descriptions, and every field set to a non-default value reaches
the plain object the asset builds, through the same functions the asset calls. A forgotten mapping fails here.
"""

import dataclasses
import json
import typing
from pathlib import Path

import dagster as dg
import pytest

from gcrp_assets.defs.data_stages import (DEDUP_SETTINGS, cross_dump_dedup, dedup_record, filter_settings,
                                          sheet_rewriter)
from gcrp_assets.lib.clean.cleaning import CleaningOptions
from gcrp_assets.lib.clean.content_policy import PolicyConfig
from gcrp_assets.lib.clean.dedup import DedupConfig
from gcrp_assets.lib.clean.filters import FilterRules
from gcrp_assets.lib.ingest.stage import RawSettings
from gcrp_assets.lib.prompts.samples import PromptOptions
from gcrp_assets.lib.prompts.sheet_rewrite import LLMSheetRewriter, RewriteSettings
from gcrp_assets.lib.training.hyperparameters import GROUPS, Hyperparameters
from gcrp_assets.lib.training.recipes import DEFAULTS, RECIPES
from gcrp_assets.orchestration.artifacts import Upstream
from gcrp_assets.orchestration.configs import FilterConfig, PromptConfig, RawConfig
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.orchestration.settings import settings_from
from gcrp_assets.orchestration.training_config import LoraConfig

# config class -> (the plain settings dataclasses it is made of, its asset-only extra fields)
CONFIGS = {
    RawConfig: ((RawSettings,), set()),
    FilterConfig: ((FilterRules, CleaningOptions, DedupConfig, PolicyConfig), set()),
    PromptConfig: ((PromptOptions, RewriteSettings),
                   {"sheet_template", "system_prompt_template", "sheet_rewrite", "sheet_rewrite_model"}),
    LoraConfig: (tuple(GROUPS.values()), set()),
}


def other_value(cls: type, f: dataclasses.Field):
    """A valid value other than the field's default, derived from its type (or its declared choices)."""
    default = f.default
    choices = f.metadata.get("choices")
    if choices:
        assert default in choices, f"{cls.__name__}.{f.name}: default {default!r} not in {choices}"
        return next(c for c in choices if c != default)
    hint = typing.get_type_hints(cls)[f.name]
    if hint is bool:
        return not default
    if hint is int:
        return default + 1
    if hint is float:
        return default * 0.5 if default else 0.5
    if hint is str:
        return f"{default}-x" if default else "x"
    if typing.get_origin(hint) is tuple:
        assert len(default) > 1, f"{cls.__name__}.{f.name}"
        return default[:-1]
    raise AssertionError(f"{cls.__name__}.{f.name}: no non-default value for type {hint}")


def non_defaults(*classes: type) -> dict:
    values = {f.name: other_value(cls, f) for cls in classes for f in dataclasses.fields(cls)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def assert_reached(obj, values: dict) -> None:
    for f in dataclasses.fields(obj):
        got = getattr(obj, f.name)
        assert (list(got) if isinstance(got, tuple) else got) == values[f.name], f"{type(obj).__name__}.{f.name}"


@pytest.mark.parametrize("config", list(CONFIGS), ids=lambda c: c.__name__)
def test_config_fields_are_the_settings_fields_with_descriptions(config):
    classes, extra = CONFIGS[config]
    declared = [f.name for cls in classes for f in dataclasses.fields(cls)]
    assert len(declared) == len(set(declared)), "a setting is declared twice"
    assert set(config.model_fields) == set(declared) | extra
    for name, info in config.model_fields.items():
        assert info.description and len(info.description) > 10, name
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


@pytest.mark.parametrize("config", [RawConfig, FilterConfig, PromptConfig], ids=lambda c: c.__name__)
def test_data_config_defaults_are_the_library_defaults(config):
    for cls in CONFIGS[config][0]:
        assert settings_from(config(), cls) == cls()


def test_raw_config_reaches_the_raw_settings():
    values = non_defaults(RawSettings)
    assert_reached(settings_from(RawConfig(**values), RawSettings), values)


def test_every_filter_setting_reaches_the_objects_filtered_threads_runs_with():
    classes = CONFIGS[FilterConfig][0]
    values = non_defaults(*classes)
    built = filter_settings(FilterConfig(**values))
    assert [type(o) for o in built] == list(classes)
    for obj in built:
        assert_reached(obj, values)


def test_every_prompt_setting_reaches_the_options_and_the_rewriter(tmp_path):
    values = non_defaults(PromptOptions, RewriteSettings)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    config = PromptConfig(**values, sheet_rewrite=True, sheet_rewrite_model=str(model_dir))
    assert_reached(settings_from(config, PromptOptions), values)      # what augmented_prompts passes on
    rewriter, fingerprint = sheet_rewriter(None, config, ArtifactStore(root=str(tmp_path)))
    assert isinstance(rewriter, LLMSheetRewriter) and rewriter.model_dir == model_dir.resolve()
    assert_reached(rewriter.settings, values)
    assert fingerprint["settings"] == {k: values[k] for k in fingerprint["settings"]}


def test_every_lora_setting_reaches_the_trainers_typed_hyperparameters():
    values = non_defaults(*GROUPS.values())
    values["recipe"] = next(name for name in RECIPES if name != "smoke")   # a real preset, every field set anyway
    config = LoraConfig(**values)
    assert config.recipe_fields() == {}                   # everything was set: the recipe fills nothing
    assert config.resolved() == values
    hp = config.hyperparameters()
    for group in GROUPS:
        assert_reached(getattr(hp, group), values)
    # What the asset sends (the resolved values less `force`, which the trainer never sees), parsed as the
    # trainer parses it.
    sent = {k: v for k, v in config.resolved().items() if k != "force"}
    parsed = Hyperparameters.from_flat(json.loads(json.dumps(sent)))
    assert parsed == Hyperparameters.from_flat({**sent, "force": False})
    assert {k: v for k, v in parsed.flat().items() if k != "force"} == sent


def test_lora_defaults_and_recipe_precedence_survive_the_typed_form():
    assert Hyperparameters.from_flat(LoraConfig().resolved()) == Hyperparameters()
    assert Hyperparameters().flat() == {**DEFAULTS, "recipe": "smoke", "allow_cpu": False, "force": False}
    herr = LoraConfig(recipe="herrsimian-8b", dropout=0.05).hyperparameters()
    assert herr.lora.rank == 128 and herr.model.load_in_4bit and herr.lora.dropout == 0.05   # set here wins
    with pytest.raises(ValueError, match="unknown \\['ranks'\\]"):
        Hyperparameters.from_flat({**DEFAULTS, "ranks": 4})
    with pytest.raises(ValueError, match="missing \\['rank'\\]"):
        Hyperparameters.from_flat({k: v for k, v in DEFAULTS.items() if k != "rank"})


def test_the_trainer_parses_its_extras_once_into_the_typed_form():
    from gcrp_assets.trainer.train import Job

    hp = LoraConfig(rank=4, max_steps=3).resolved()
    job = Job.from_extras({"data_path": "/d/tokenized.parquet", "base_model_dir": "/m", "output_dir": "/o/adapter",
                           "fingerprint": "f", "format": "inst", "data_max_length": None, "recipe_fields": [],
                           "hyperparameters": hp})
    assert job.hp.lora.rank == 4 and job.hp.optimizer.max_steps == 3 and job.hyperparameters == hp
    assert job.run_dir == Path("/o/adapter.run") and job.partial_dir == Path("/o/adapter.partial")


def test_cross_dump_dedup_uses_the_settings_the_dumps_were_filtered_with():
    def samples(**dedup) -> Upstream:
        return Upstream("augmented_prompts", Path("."), "v", {DEDUP_SETTINGS: dedup_record(DedupConfig(**dedup))})

    strict = {"near_duplicate_threshold": 0.5, "minhash_permutations": 64}
    assert cross_dump_dedup({"a": samples(**strict), "b": samples(**strict)}) == DedupConfig(**strict)
    assert cross_dump_dedup({"a": Upstream("augmented_prompts", Path("."), "v")}) == DedupConfig()  # unrecorded
    with pytest.raises(dg.Failure, match="different duplicate settings"):
        cross_dump_dedup({"a": samples(**strict), "b": samples()})
