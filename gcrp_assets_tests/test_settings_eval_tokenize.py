"""TokenizeConfig and EvalConfig are generated from their plain settings (one declaration per setting): same
names, defaults and help text, and every field set in a run config reaches the plain settings object the
asset builds (or, for the asset's own fields, the asset code that uses it)."""

import dataclasses
from types import SimpleNamespace

import dagster as dg
import pytest

from gcrp_assets.defs import evaluation as eval_defs
from gcrp_assets.defs import tokenized as tokenize_defs
from gcrp_assets.lib.evaluation.settings import EvalSettings
from gcrp_assets.lib.formats.settings import TokenizeSettings
from gcrp_assets.orchestration.configs import EvalConfig, TokenizeConfig
from gcrp_assets.orchestration.resources import ArtifactStore

# A non-default, valid value for every field of the two configs.
TOKENIZE_VALUES = {"dumps": ["b.jsonl", "a.jsonl"], "format": "chatml", "label_policy": "last_model_turn",
                   "overlap_turns": 2, "max_length": 1024, "eval_fraction": 0.3, "min_eval_threads": 2,
                   "split_seed": 7}
EVAL_VALUES = {"batch_size": 3, "precision": "fp32", "max_prompt_tokens": 512, "max_generations": 5,
               "samples_per_context": 0, "temperature": 0.7, "min_p": 0.2, "seed": 11, "generation_batch_size": 2,
               "max_new_tokens": 9, "report_samples": 3, "speaker_turns": 6, "loss_tolerance": 0.5,
               "bootstrap_resamples": 200, "min_events": 5}
ASSET_FIELDS = {"tokenize": {"dumps"}, "eval": {"loss_tolerance"}}  # configure the asset, not the plain code


class _Reached(Exception):
    """Raised by the stand-in for the plain call, once it has recorded what it was given."""


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("config, settings, values, asset_fields", [
    (TokenizeConfig, TokenizeSettings, TOKENIZE_VALUES, ASSET_FIELDS["tokenize"]),
    (EvalConfig, EvalSettings, EVAL_VALUES, ASSET_FIELDS["eval"])])
def test_config_fields_are_the_settings_fields_with_their_defaults_and_help(config, settings, values, asset_fields):
    fields = _fields(settings)
    assert set(config.model_fields) == set(fields) | asset_fields == set(values)
    for name, f in fields.items():
        assert config.model_fields[name].default == f.default, name
        assert config.model_fields[name].description == f.metadata["help"], name
        assert values[name] != f.default, name  # the test below sets every field to something else
    for name in asset_fields:
        assert values[name] != config.model_fields[name].default and config.model_fields[name].description


def _fake_upstream(tmp_path):
    def upstream(context, key, partition=None):
        return SimpleNamespace(key=key, path=tmp_path / key / (partition or ""), data_version=f"v-{key}-{partition}",
                               metadata={})
    return upstream


def test_every_tokenize_config_field_reaches_the_asset_s_settings(tmp_path, monkeypatch):
    seen = {}

    def selected_dumps(instance, requested):
        seen["dumps"] = list(requested)
        return sorted(requested)

    def run_tokenize(settings, tokenizer_dir, sample_files, out, log=print, dedup=None):
        seen["settings"] = settings
        raise _Reached

    def build_or_reuse(context, folder_for, inputs, build, **kwargs):
        return build(tmp_path / "out")

    monkeypatch.setattr(tokenize_defs, "selected_dumps", selected_dumps)
    monkeypatch.setattr(tokenize_defs, "upstream", _fake_upstream(tmp_path))
    monkeypatch.setattr(tokenize_defs, "run_tokenize", run_tokenize)
    monkeypatch.setattr(tokenize_defs, "build_or_reuse", build_or_reuse)
    with dg.build_asset_context() as context, pytest.raises(_Reached):
        tokenize_defs.tokenized_parquet(context, config=TokenizeConfig(**TOKENIZE_VALUES),
                                        store=ArtifactStore(root=str(tmp_path)))
    settings = seen["settings"]
    assert isinstance(settings, TokenizeSettings)
    assert dataclasses.asdict(settings) == {k: v for k, v in TOKENIZE_VALUES.items() if k != "dumps"}
    assert seen["dumps"] == TOKENIZE_VALUES["dumps"]


def test_every_eval_config_field_reaches_the_asset_s_settings(tmp_path, monkeypatch):
    captured = {}

    def evaluate(settings, inputs, out, log=print):
        captured["settings"] = settings
        raise _Reached

    def build_or_reuse(context, folder_for, inputs, build, checks, **kwargs):
        captured["checks"] = checks
        return build(tmp_path / "out")

    monkeypatch.setattr(eval_defs, "upstream", _fake_upstream(tmp_path))
    monkeypatch.setattr(eval_defs, "latest_materialization", lambda instance, key: SimpleNamespace(metadata={}))
    monkeypatch.setattr(eval_defs, "read_manifest", lambda folder: None)
    monkeypatch.setattr(eval_defs, "evaluate", evaluate)
    monkeypatch.setattr(eval_defs, "build_or_reuse", build_or_reuse)
    with dg.build_asset_context() as context, pytest.raises(_Reached):
        eval_defs.eval_report(context, config=EvalConfig(**EVAL_VALUES), store=ArtifactStore(root=str(tmp_path)))
    settings = captured["settings"]
    assert isinstance(settings, EvalSettings)
    assert dataclasses.asdict(settings) == {k: v for k, v in EVAL_VALUES.items() if k != "loss_tolerance"}
    # loss_tolerance configures the asset's blocking check.
    [within] = captured["checks"]({"model_turn_loss_base": 1.0, "model_turn_loss_adapter": 1.4})
    [beyond] = captured["checks"]({"model_turn_loss_base": 1.0, "model_turn_loss_adapter": 1.6})
    assert within.passed and not beyond.passed
    assert within.metadata["tolerance"].value == EVAL_VALUES["loss_tolerance"]


def test_default_configs_give_default_settings():
    from gcrp_assets.orchestration.settings import settings_from

    assert settings_from(TokenizeConfig(), TokenizeSettings) == TokenizeSettings()
    assert settings_from(EvalConfig(), EvalSettings) == EvalSettings()
