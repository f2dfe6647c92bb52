"""The party-12b recipe end to end on a CPU (allow_cpu) with the tiny model: lora_checkpoint launches the
trainer through Pipes under the `deepspeed` launcher, 2 processes over gloo, ZeRO-2 from the generated JSON,
8-bit bitsandbytes base + LoRA, global batch from the recipe; only rank 0 reports to Dagster.

DeepSpeed JIT-compiles its shared-memory CPU collective (`deepspeed_shm_comm`, ~30-60 s) on first use; the
build is cached in $TORCH_EXTENSIONS_DIR (a session temp dir unless the environment names one, as the
Makefile does). The optimizer stays the Trainer's torch AdamW, so no DeepSpeed optimizer op is compiled."""

import json
import os
from pathlib import Path

import dagster as dg

from gcrp_assets.orchestration.artifacts import latest_materialization
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.defs.training import lora_checkpoint
from gcrp_assets.orchestration.training_config import LoraConfig
from gcrp_assets_tests.test_training_support import (adapter_changes_the_model, record_upstream, synthetic_rows,
                                                     test_instance, write_tokenized)


def test_party_recipe_trains_with_zero2_in_two_processes_over_gloo(tmp_path, tiny_model_dir, torch_extensions_dir,
                                                                   monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # two ranks on a small CPU
    data = write_tokenized(tmp_path / "tok", synthetic_rows(n_train=8, n_eval=2, lengths=(40, 120)))
    config = LoraConfig(recipe="party-12b", allow_cpu=True, max_steps=2, batch_size=2, global_batch_size=8,
                        logging_steps=1, eval_steps=0, precision="fp32", learning_rate=1e-3)
    with test_instance(tmp_path) as instance:
        record_upstream(instance, data, tiny_model_dir)
        result = dg.materialize([lora_checkpoint], instance=instance,
                                resources={"store": ArtifactStore(root=str(tmp_path / "artifacts")),
                                           "pipes": dg.PipesSubprocessClient()},
                                run_config=dg.RunConfig(ops={"lora_checkpoint": config}))
        assert result.success
        materializations = result.asset_materializations_for_node("lora_checkpoint")
        assert len(materializations) == 1   # rank 0 alone reports
        meta = {k: v.value for k, v in latest_materialization(instance, "lora_checkpoint").metadata.items()}
    assert (meta["world_size"], meta["zero_stage"], meta["optimizer"]) == (2, 2, "DeepSpeedZeroOptimizer")
    assert meta["quantization"].startswith("8-bit") and "Linear8bitLt" in meta["quantization"]
    assert meta["gradient_accumulation_steps"] == 2 and meta["samples_per_step"] == 8   # 8 = 2 ranks x 2 x 2
    assert meta["steps"] == 2 and meta["recipe"] == "party-12b" and meta["padding_waste"] == 0.0
    folder = Path(meta["path"])
    resolved = json.loads((folder / "training_config.json").read_text())
    assert resolved["deepspeed"]["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in resolved["deepspeed"]["zero_optimization"]
    assert resolved["hyperparameters"]["learning_rate"] == 1e-3 and resolved["hyperparameters"]["num_epochs"] == 3
    assert "lr_scheduler" in resolved["recipe_fields"] and "learning_rate" not in resolved["recipe_fields"]

    assert adapter_changes_the_model(tiny_model_dir, folder)


def test_zero2_run_killed_with_sigkill_resumes_from_its_sharded_checkpoint(tmp_path, tiny_model_dir,
                                                                           torch_extensions_dir):
    """The deepspeed launcher and both ranks killed at once (SIGKILL to the process group) after the first
    checkpoint; the same command again loads the ZeRO-2 optimizer shards and finishes at the same step."""
    import signal
    import subprocess
    import time

    from gcrp_assets.defs.training import trainer_command
    from gcrp_assets_tests.test_training_support import ROOT, extras_for, trainer_env

    data = write_tokenized(tmp_path / "tok", synthetic_rows(n_train=16, n_eval=0, lengths=(40, 120)))
    hp = LoraConfig(launcher="deepspeed", nproc_per_node=2, zero_stage=2, max_steps=8, batch_size=1, save_steps=1,
                    logging_steps=1, precision="fp32").resolved()
    out = tmp_path / "adapter"
    env = trainer_env(extras_for(data, tiny_model_dir, out, hp), OMP_NUM_THREADS="1")
    checkpoints = tmp_path / "adapter.run" / "checkpoints"
    first = subprocess.Popen(trainer_command(hp), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not any(checkpoints.glob("checkpoint-*")):
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    left = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert left and left[-1] < 8 and not (out / "metrics.json").exists(), left

    second = subprocess.run(trainer_command(hp), cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["steps"], metrics["resumed_from_step"]) == (8, left[-1])
    assert (metrics["world_size"], metrics["optimizer"]) == (2, "DeepSpeedZeroOptimizer")
    history = json.loads((out / "loss_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 9))
