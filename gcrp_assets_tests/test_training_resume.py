"""Never lose, never repeat: the trainer killed with SIGKILL after its first checkpoint resumes from it when
lora_checkpoint is materialized again with the same fingerprint, and ends at the same step count; a finished
adapter is then reused without starting the trainer or loading any model."""

import json
import signal
import threading
import time
from pathlib import Path

import dagster as dg
import psutil

from gcrp_assets.orchestration.artifacts import latest_materialization
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.defs.training import lora_checkpoint
from gcrp_assets.orchestration.training_config import LoraConfig
from gcrp_assets_tests.test_training_support import record_upstream, synthetic_rows, test_instance, write_tokenized

# Enough steps after the first checkpoint that the kill lands before the end even on a loaded machine (with 8, a
# killer thread slowed by CI load once found the trainer already at its last step).
STEPS = 24
CONFIG = LoraConfig(max_steps=STEPS, batch_size=2, save_steps=2, logging_steps=1, eval_steps=0, precision="fp32",
                    learning_rate=1e-2, warmup_steps=0, lr_scheduler="constant", merge=True)


class _NoLaunch(dg.PipesSubprocessClient):
    def run(self, *args, **kwargs):  # noqa: ARG002
        raise AssertionError("a finished adapter must be reused without starting the trainer")


def _kill_trainer_after_first_checkpoint(root: Path, outcome: dict, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(root.glob("lora_checkpoint/*.run/checkpoints/checkpoint-*"))
        if found:
            for child in psutil.Process().children(recursive=True):
                try:
                    if "gcrp_assets.trainer.train" in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGKILL)
                        outcome["killed_after"] = found[0].name
                except psutil.NoSuchProcess:
                    pass
            return
        time.sleep(0.02)


def test_sigkill_resumes_from_the_last_checkpoint_then_the_adapter_is_reused(tmp_path, tiny_model_dir, monkeypatch):
    data = write_tokenized(tmp_path / "tok", synthetic_rows(n_train=16, n_eval=2, lengths=(60, 200)))
    root = tmp_path / "artifacts"
    resources = {"store": ArtifactStore(root=str(root))}
    run_config = dg.RunConfig(ops={"lora_checkpoint": CONFIG})
    with test_instance(tmp_path) as instance:
        record_upstream(instance, data, tiny_model_dir)

        def materialize(pipes):
            return dg.materialize([lora_checkpoint], instance=instance, resources={**resources, "pipes": pipes},
                                  run_config=run_config, raise_on_error=False)

        # 1. Killed with SIGKILL once a checkpoint exists: the run fails, the checkpoint stays.
        outcome: dict = {}
        killer = threading.Thread(target=_kill_trainer_after_first_checkpoint, args=(root, outcome))
        killer.start()
        first = materialize(dg.PipesSubprocessClient())
        killer.join()
        assert "killed_after" in outcome and not first.success
        run_dir = next(root.glob("lora_checkpoint/*.run"))
        left = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
        assert left and left[-1] < STEPS, left
        assert not any(p.name == "manifest.json" for p in root.glob("lora_checkpoint/*/*"))

        # 2. Same fingerprint again: resumes from the newest checkpoint, ends at step STEPS, then cleans up.
        second = materialize(dg.PipesSubprocessClient())
        assert second.success
        meta = {k: v.value for k, v in latest_materialization(instance, "lora_checkpoint").metadata.items()}
        assert meta["steps"] == STEPS and meta["resumed_from_step"] == left[-1] and meta["cached"] is False
        history = json.loads((Path(meta["path"]) / "loss_history.json").read_text())
        logged = [h["step"] for h in history if "loss" in h]
        assert logged == list(range(1, STEPS + 1)), logged   # steps before the kill kept, none repeated
        assert "| 1 |" in meta["loss_table"] and f"| {STEPS} |" in meta["loss_table"]
        assert meta["padding_waste"] == 0.0 and meta["packing"] is True and meta["tokens_per_second"] > 0
        assert meta["peak_memory_mb"] > 0 and meta["world_size"] == 1
        checks = second.get_asset_check_evaluations()
        assert [(c.check_name, c.passed) for c in checks] == [("loss_is_finite", True)]
        assert not run_dir.exists()
        folder = Path(meta["path"])
        for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                     "training_config.json", "loss_curve.png", "metrics.json", "merged/model.safetensors"):
            assert (folder / name).is_file(), name
        resolved = json.loads((folder / "training_config.json").read_text())
        assert resolved["resumed_from"].endswith(f"checkpoint-{left[-1]}") and resolved["recipe"] == "smoke"

        # 3. Same fingerprint once more: the finished adapter is reused; no trainer, no model load.
        import transformers

        def no_model_load(*args, **kwargs):
            raise AssertionError("a reused adapter must not load a model")

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model_load)
        third = materialize(_NoLaunch())
        assert third.success
        reused = {k: v.value for k, v in latest_materialization(instance, "lora_checkpoint").metadata.items()}
        assert reused["cached"] is True and reused["data_version"] == meta["data_version"]
        assert reused["steps"] == STEPS and reused["loss_table"] == meta["loss_table"]
