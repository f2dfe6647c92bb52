"""The code location loads the way users load it, and the trainer stays free of Dagster."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from gcrp_assets.definitions import build_defs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_six_stage_chain_plus_base_model_in_order():
    with dg.instance_for_test():  # resolving definitions consults the current instance
        graph = build_defs().resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"raw_threads", "filtered_threads", "augmented_prompts", "tokenized_parquet", "lora_checkpoint",
                    "eval_report", "base_model", "sillytavern_chats"}
    parents = lambda k: {p.to_user_string() for p in graph.get(dg.AssetKey(k)).parent_keys}
    assert parents("filtered_threads") == {"raw_threads"}
    assert parents("augmented_prompts") == {"filtered_threads"}
    assert parents("tokenized_parquet") == {"augmented_prompts", "base_model"}
    assert parents("lora_checkpoint") == {"tokenized_parquet", "base_model"}
    assert "lora_checkpoint" in parents("eval_report")
    assert parents("sillytavern_chats") == {"augmented_prompts"}  # the optional export
    for key in keys:
        assert graph.get(dg.AssetKey(key)).description, f"{key} has no description"


def test_workspace_and_dg_project_load(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for command, says in (([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                           "Validation successful for code location gcrp_assets"),
                          ([str(BIN / "dg"), "check", "defs"], "All definitions loaded successfully")):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and says in done.stdout + done.stderr, done.stdout + done.stderr
    # dg check defs is clean: no warning (a location name that differs from the instance's, a venv mismatch)
    assert "warning" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


def test_the_location_is_the_defs_folder_plus_location_wide_settings():
    from gcrp_assets.definitions import build_defs, defs
    from gcrp_assets.orchestration.resources import DumpInbox

    assert not isinstance(defs, dg.Definitions)  # `@dg.definitions`: built when the location loads
    with dg.instance_for_test():
        loaded = defs()
        assert set(loaded.resources) == {"inbox", "store", "base", "pipes"}  # defs/resources.py
        assert loaded.executor is dg.in_process_executor
        assert {job.name for job in loaded.jobs} == {"dump_stages", "training_chain"}
        assert {s.name for s in loaded.sensors} == {"inbox_sensor", "data_automation"}
        assert [s.name for s in loaded.schedules] == ["weekly_data_refresh"]
        own = {"inbox": DumpInbox(path="/elsewhere")}
        assert build_defs(own).resources == own  # tests bring their own resources


def test_trainer_imports_dagster_pipes_but_not_dagster():
    code = ("import sys, gcrp_assets.trainer.train as t; "
            "bad = [m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')]; "
            "assert not bad, bad; assert 'dagster_pipes' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
