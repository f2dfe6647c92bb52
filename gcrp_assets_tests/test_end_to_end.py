"""The whole chain materialized in a real Dagster instance, on a tiny random model with the real tokenizer."""

import json
import math
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from gcrp_assets.orchestration.artifacts import latest_materialization
from gcrp_assets.orchestration.configs import EvalConfig, TokenizeConfig
from gcrp_assets.orchestration.resources import ArtifactStore, BaseModelSource, DumpInbox, packaged_inbox
from gcrp_assets.orchestration.runner import materialize_chain
from gcrp_assets.orchestration.training_config import LoraConfig
from gcrp_assets.defs.tokenized import tokenized_parquet
from gcrp_assets.defs.training import base_model
from gcrp_assets.definitions import build_defs
from gcrp_assets.lib.formats.chat_format import get_format, render
from gcrp_assets.lib.hashing import sha256_file
from gcrp_assets.lib.formats.tokenization import IGNORE

pytestmark = pytest.mark.e2e

PER_DUMP = ["raw_threads", "filtered_threads", "augmented_prompts"]
DUMPS = ["moonlit_guild.jsonl", "starport_forum.jsonl"]


def _resources(root, model_dir, inbox=None):
    return {"inbox": DumpInbox(path=str(inbox or packaged_inbox())), "store": ArtifactStore(root=str(root)),
            "base": BaseModelSource(hf_model_dir=str(model_dir)), "pipes": dg.PipesSubprocessClient()}


RUN_CONFIG = dg.RunConfig(ops={
    "tokenized_parquet": TokenizeConfig(max_length=2048),
    "lora_checkpoint": LoraConfig(max_steps=6, batch_size=2, learning_rate=1e-2, max_length=2048, logging_steps=2,
                                  precision="fp32", warmup_steps=0, lr_scheduler="constant"),
    "eval_report": EvalConfig(max_generations=2, max_new_tokens=12, precision="fp32", max_prompt_tokens=1536),
})


def _metadata(instance, key, partition=None):
    materialization = latest_materialization(instance, key, partition)
    return {k: v.value for k, v in materialization.metadata.items()}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("artifacts")
    home = tmp_path_factory.mktemp("dagster_home")
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        defs = build_defs(_resources(root, tiny_model_dir))
        yield materialize_chain(instance, defs, RUN_CONFIG), instance, root, defs


def test_every_asset_materializes_and_every_check_passes(chain):
    outcome, instance, _, _ = chain
    assert outcome.success and outcome.dumps == DUMPS
    assert sorted(instance.get_dynamic_partitions("dumps")) == DUMPS
    materialized = {(e.asset_key.to_user_string(), e.partition) for r in outcome.results
                    for e in r.get_asset_materialization_events()}
    assert materialized == {(key, dump) for key in PER_DUMP for dump in DUMPS} | {
        ("tokenized_parquet", None), ("base_model", None), ("lora_checkpoint", None), ("eval_report", None)}
    checks = [c for r in outcome.results for c in r.get_asset_check_evaluations()]
    assert len(checks) == 18 and all(c.passed for c in checks), [(c.check_name, c.passed) for c in checks]


def test_counts_add_up_and_rejects_are_recorded(chain):
    _, instance, _, _ = chain
    kept = rejected = malformed = 0
    reasons = set()
    for dump in DUMPS:
        raw = _metadata(instance, "raw_threads", dump)
        assert raw["threads"] + raw["rejected_lines"] == raw["lines"]
        malformed += raw["rejected_lines"]
        rejects = pq.read_table(raw["path"] + "/rejects.parquet").to_pylist()
        assert all(r["dump"] == dump and r["line"] > 0 and f"{dump}:{r['line']}" in r["detail"] for r in rejects)
        filtered = _metadata(instance, "filtered_threads", dump)
        assert filtered["threads_in"] == raw["threads"]
        assert filtered["threads_kept"] + filtered["threads_rejected"] == filtered["threads_in"]
        kept += filtered["threads_kept"]
        rejected += filtered["threads_rejected"]
        reasons |= {r["reason"] for r in pq.read_table(filtered["path"] + "/rejects.parquet").to_pylist()}
        assert _metadata(instance, "augmented_prompts", dump)["samples"] == filtered["threads_kept"]
    assert malformed == 2 and kept >= 60 and rejected >= 8
    assert {"too_few_turns", "too_few_characters", "too_many_characters"} <= reasons


def test_trained_labels_decode_to_exactly_the_model_turns(chain, smol_tokenizer):
    _, instance, _, _ = chain
    tokenized = _metadata(instance, "tokenized_parquet")
    assert tokenized["dumps"] == DUMPS
    rows = pq.read_table(tokenized["path"] + "/tokenized.parquet").to_pylist()
    samples = {s["sample_id"]: s for dump in DUMPS for s in pq.read_table(
        _metadata(instance, "augmented_prompts", dump)["path"] + "/samples.parquet").to_pylist()}
    fmt = get_format("inst")
    assert {r["split"] for r in rows} == {"train", "eval"}
    eval_threads = {r["thread_key"] for r in rows if r["split"] == "eval"}
    assert not eval_threads & {r["thread_key"] for r in rows if r["split"] == "train"}
    for row in rows:
        sample = samples[row["sample_id"]]
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]
        model_turns = [t for t in sample["turns"][row["first_turn"]:row["last_turn"]] if t["role"] == "model"]
        assert smol_tokenizer.decode(trained) == "".join(f"{t['name']}: {t['text']}[/INST]" for t in model_turns)
        assert row["input_ids"][0] == smol_tokenizer.bos_token_id and row["input_ids"][1] != smol_tokenizer.bos_token_id
        assert len(row["input_ids"]) <= 2048
        assert row["text"] == render(sample, fmt, smol_tokenizer.bos_token, (row["first_turn"], row["last_turn"])).text


def test_adapter_loads_changes_logits_and_lowers_held_out_loss(chain, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, instance, _, _ = chain
    checkpoint = _metadata(instance, "lora_checkpoint")
    folder = checkpoint["path"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "training_config.json", "loss_curve.png"):
        assert (Path(folder) / name).is_file(), name
    assert checkpoint["steps"] == 6 and "| step |" in checkpoint["loss_table"]
    assert checkpoint["trained_on_tokenized_parquet"] == _metadata(instance, "tokenized_parquet")["data_version"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
    ids = torch.tensor([[1, 75, 39637, 77, 3980, 198, 6777, 42]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert (adapted - plain).abs().max().item() > 1e-4

    report = _metadata(instance, "eval_report")
    for key in ("model_turn_loss_base", "model_turn_loss_adapter", "perplexity_base", "perplexity_adapter"):
        assert math.isfinite(report[key]) and report[key] > 0
    assert report["model_turn_loss_adapter"] < report["model_turn_loss_base"]
    assert 0.0 <= report["impersonation_rate_adapter"] <= 1.0 and report["generations"] == 2
    text = open(report["report_path"]).read()
    assert f"{report['model_turn_loss_base']:.4g}" in text and "## Generations" in text
    summary = json.loads(open(report["path"] + "/report.json").read())["summary"]
    assert summary["model_turn_loss_adapter"] == report["model_turn_loss_adapter"]
    # The paired bootstrap CI over threads brackets the mean per-thread difference, which is negative here.
    assert summary["loss_delta_ci_low"] <= summary["loss_delta_mean_per_thread"] <= summary["loss_delta_ci_high"] < 0
    assert len(summary["per_thread_loss"]) == summary["eval_threads"] >= 4
    user = summary["role_losses"]["user_text"]   # the impersonation warning, per thread as well
    assert user["tokens"] > 0 and len(user["per_thread"]) == user["threads"] >= 4
    assert user["delta_ci_low"] <= user["delta_mean_per_thread"] <= user["delta_ci_high"]
    speakers = summary["speaker_selection"]
    assert speakers["adapter"]["n"] == speakers["base"]["n"] > 0
    assert set(speakers["baselines"]) == {"most_recent_other", "round_robin", "most_frequent"}
    card = open(report["model_card"]).read()
    assert card.startswith("---\nlibrary_name: peft") and "[INST]system" in card and "## Known issues (measured)" in card
    assert f"{summary['model_turn_loss_adapter']:.4g}" in card and "moonlit_guild.jsonl" in card
    # A card to publish: the base model by name, no path of this machine, only the settings that shaped it.
    assert f"\nbase_model: {Path(tiny_model_dir).name}\n" in card and str(tiny_model_dir) not in card
    assert "| learning_rate " in card and "master_port" not in card and "load_in_4bit" not in card
    # The card and presets are the eval report's own output: the adapter's folder is never written after training.
    assert Path(report["model_card"]).parent == Path(report["path"])
    peft_readme = Path(folder) / "README.md"   # PEFT's own stub, written by save_pretrained
    assert not peft_readme.exists() or "## Known issues (measured)" not in peft_readme.read_text()
    assert not list(Path(folder).glob("sillytavern-*.json"))
    assert f"`{summary['adapter_version']}`" in card
    instruct = json.loads((Path(report["path"]) / "sillytavern-instruct.json").read_text())
    assert instruct["input_sequence"].strip().startswith("[INST]user") and "[INST]" in instruct["stop_sequence"]
    assert json.loads((Path(report["path"]) / "sillytavern-context.json").read_text())["story_string"]
    # The UI: a headline table, plots in the Markdown, links; every interval brackets the Δ printed beside it.
    headline = report["headline"].records
    assert [r.data["metric"] for r in headline][:2] == ["model-turn loss (nats/token)", "model-turn perplexity"]
    for r in headline:
        if r.data["CI"].startswith("CI ["):
            low, high = (float(x) for x in r.data["CI"][4:].split("]")[0].split(", "))
            assert low <= float(r.data["Δ"]) <= high, r.data
    assert any("teacher-forced" in r.data["metric"] for r in headline)
    assert "data:image/png;base64," in report["report"] and report["report_html_url"].startswith("file://")
    page = open(report["report_html"]).read()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "src=\"http" not in page and "href=\"http" not in page  # self-contained


def test_checkpoint_lineage_walks_back_to_the_dump_files(chain):
    _, instance, _, _ = chain
    checkpoint = _metadata(instance, "lora_checkpoint")
    assert checkpoint["trained_on_dumps"] == DUMPS
    manifest = json.loads((Path(checkpoint["path"]) / "manifest.json").read_text())
    tokenized = _metadata(instance, "tokenized_parquet")
    assert manifest["inputs"]["tokenized_parquet"] == tokenized["data_version"] == checkpoint["trained_on_tokenized_parquet"]
    assert manifest["inputs"]["base_model"] == _metadata(instance, "base_model")["data_version"]
    tokenized_inputs = json.loads((Path(tokenized["path"]) / "manifest.json").read_text())["inputs"]
    for dump in DUMPS:
        samples = _metadata(instance, "augmented_prompts", dump)
        assert tokenized_inputs["augmented_prompts"][dump] == samples["data_version"]
        filtered_version = json.loads((Path(samples["path"]) / "manifest.json").read_text())["inputs"]["filtered_threads"]
        filtered = _metadata(instance, "filtered_threads", dump)
        assert filtered_version == filtered["data_version"]
        raw_version = json.loads((Path(filtered["path"]) / "manifest.json").read_text())["inputs"]["raw_threads"]
        raw = _metadata(instance, "raw_threads", dump)
        assert raw_version == raw["data_version"]
        raw_inputs = json.loads((Path(raw["path"]) / "manifest.json").read_text())["inputs"]
        assert raw_inputs["dump_sha256"] == sha256_file(packaged_inbox() / dump)


def test_rematerializing_unchanged_inputs_reuses_every_artifact(chain):
    _, instance, _, defs = chain
    keys = [(k, d) for k in PER_DUMP for d in DUMPS] + [
        (k, None) for k in ("tokenized_parquet", "base_model", "lora_checkpoint", "eval_report")]
    before = {key: _metadata(instance, *key)["data_version"] for key in keys}
    assert materialize_chain(instance, defs, RUN_CONFIG).success
    for key, version in before.items():
        meta = _metadata(instance, *key)
        assert meta["data_version"] == version, key
        if key[0] != "base_model":  # a local model dir is used in place, not built
            assert meta["cached"] is True, key


def test_data_outputs_are_byte_identical_across_runs(tmp_path, tiny_model_dir):
    outputs = []
    for attempt in ("a", "b"):
        (tmp_path / f"home_{attempt}").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / f"home_{attempt}")) as instance:
            defs = build_defs(_resources(tmp_path / attempt, tiny_model_dir))
            for dump in DUMPS:
                instance.add_dynamic_partitions("dumps", [dump])
                assert defs.resolve_job_def("dump_stages").execute_in_process(instance=instance, partition_key=dump).success
            assert dg.materialize([base_model, tokenized_parquet], resources=_resources(tmp_path / attempt, tiny_model_dir),
                                  instance=instance, run_config=dg.RunConfig(ops={
                                      "tokenized_parquet": TokenizeConfig(max_length=2048)})).success
            outputs.append({p.relative_to(tmp_path / attempt).as_posix(): p.read_bytes()
                            for p in sorted((tmp_path / attempt).rglob("*.parquet"))})
    assert len(outputs[0]) == 12 and outputs[0] == outputs[1]


def test_changing_one_stage_config_reruns_it_and_downstream_only(tmp_path, tiny_model_dir):
    from gcrp_assets.orchestration.configs import FilterConfig

    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        defs = build_defs(_resources(tmp_path / "art", tiny_model_dir))
        instance.add_dynamic_partitions("dumps", [DUMPS[0]])
        job = defs.resolve_job_def("dump_stages")
        assert job.execute_in_process(instance=instance, partition_key=DUMPS[0]).success
        before = {k: _metadata(instance, k, DUMPS[0]) for k in PER_DUMP}
        changed = dg.RunConfig(ops={"filtered_threads": FilterConfig(min_turns=8)})
        assert job.execute_in_process(instance=instance, partition_key=DUMPS[0], run_config=changed).success
        after = {k: _metadata(instance, k, DUMPS[0]) for k in PER_DUMP}
    assert after["raw_threads"]["cached"] is True
    assert after["raw_threads"]["data_version"] == before["raw_threads"]["data_version"]
    assert after["filtered_threads"]["cached"] is False and after["augmented_prompts"]["cached"] is False
    assert after["filtered_threads"]["threads_kept"] < before["filtered_threads"]["threads_kept"]
    assert after["augmented_prompts"]["data_version"] != before["augmented_prompts"]["data_version"]
