"""The trainer under each multi-process launcher on a CPU, 2 processes over gloo, with the tiny model: plain
DDP under `torchrun`, ZeRO-3 under the `deepspeed` launcher, and ZeRO-2 with the optimizer offloaded to the
CPU. (ZeRO-2 itself, 8-bit, and resume after SIGKILL are in test_training_zero2.py.)

Each run checks what only a real 2-process run can produce: both ranks' tokens summed into the
throughput count, the samples per optimizer step, the optimizer that really stepped, and an adapter that
changes the model's output."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gcrp_assets.defs.training import trainer_command
from gcrp_assets.orchestration.training_config import LoraConfig
from gcrp_assets_tests.test_training_support import (adapter_changes_the_model, extras_for, run_trainer, synthetic_rows,
                                                     write_tokenized)


def _train(tmp_path: Path, tiny_model_dir: Path, **fields) -> tuple[dict, Path, int]:
    rows = synthetic_rows(n_train=8, n_eval=0, lengths=(40, 120))
    data = write_tokenized(tmp_path / "tok", rows)
    hp = LoraConfig(nproc_per_node=2, max_steps=2, batch_size=2, global_batch_size=8, logging_steps=1,
                    precision="fp32", learning_rate=1e-3, **fields).resolved()
    out = tmp_path / "adapter"
    done = run_trainer(trainer_command(hp), extras_for(data, tiny_model_dir, out, hp), timeout=420,
                       OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    train_tokens = sum(len(r["input_ids"]) for r in pq.read_table(data / "tokenized.parquet").to_pylist())
    return json.loads((out / "metrics.json").read_text()), out, train_tokens


def test_torchrun_trains_with_ddp_in_two_processes(tmp_path, tiny_model_dir):
    metrics, out, tokens = _train(tmp_path, tiny_model_dir, launcher="torchrun")
    assert (metrics["world_size"], metrics["zero_stage"], metrics["optimizer"], metrics["base_optimizer"]) == (
        2, 0, "AdamW", "AdamW")
    assert (metrics["gradient_accumulation_steps"], metrics["samples_per_step"], metrics["steps"]) == (2, 8, 2)
    # 2 steps x 8 samples = the 8 training rows twice, half on each rank: the count is summed over ranks.
    assert metrics["train_tokens"] == 2 * tokens
    assert adapter_changes_the_model(tiny_model_dir, out)


@pytest.mark.usefixtures("torch_extensions_dir")
def test_deepspeed_zero3_shards_parameters_and_gathers_the_adapter_on_save(tmp_path, tiny_model_dir):
    metrics, out, tokens = _train(tmp_path, tiny_model_dir, launcher="deepspeed", zero_stage=3)
    assert (metrics["world_size"], metrics["zero_stage"]) == (2, 3)
    assert metrics["optimizer"] == "DeepSpeedZeroOptimizer_Stage3"
    assert metrics["samples_per_step"] == 8 and metrics["train_tokens"] == 2 * tokens
    resolved = json.loads((out / "training_config.json").read_text())
    assert resolved["deepspeed"]["zero_optimization"]["stage"] == 3
    # Saved from sharded parameters: the gathered adapter has full-size LoRA matrices, not empty shards.
    from safetensors.torch import load_file

    tensors = load_file(out / "adapter_model.safetensors")
    assert tensors and all(t.numel() > 0 for t in tensors.values())
    assert adapter_changes_the_model(tiny_model_dir, out)


@pytest.mark.usefixtures("torch_extensions_dir")
def test_deepspeed_zero2_with_the_optimizer_offloaded_to_the_cpu(tmp_path, tiny_model_dir):
    metrics, out, tokens = _train(tmp_path, tiny_model_dir, launcher="deepspeed", zero_stage=2,
                                  offload_optimizer=True)
    assert (metrics["optimizer"], metrics["base_optimizer"]) == ("DeepSpeedZeroOptimizer", "DeepSpeedCPUAdam")
    assert (metrics["world_size"], metrics["zero_stage"]) == (2, 2)
    assert metrics["train_tokens"] == 2 * tokens
    resolved = json.loads((out / "training_config.json").read_text())
    assert resolved["deepspeed"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert adapter_changes_the_model(tiny_model_dir, out)


def test_two_nodes_under_torchrun_rendezvous_and_train_as_one_job(tmp_path, tiny_model_dir):
    """Two "nodes" on this host: the same torchrun command twice, node_rank 0 and 1, one process each,
    meeting at master_addr:master_port over TCP, as on two machines sharing a file system."""
    import subprocess

    from gcrp_assets_tests.processes import free_port
    from gcrp_assets_tests.test_training_support import ROOT, trainer_env

    rows = synthetic_rows(n_train=8, n_eval=0, lengths=(40, 120))
    data = write_tokenized(tmp_path / "tok", rows)
    port = free_port()
    out = tmp_path / "adapter"
    nodes = []
    for node_rank in (0, 1):
        hp = LoraConfig(launcher="torchrun", nnodes=2, node_rank=node_rank, nproc_per_node=1,
                        master_addr="127.0.0.1", master_port=port, max_steps=2, batch_size=2, global_batch_size=4,
                        logging_steps=1, precision="fp32", learning_rate=1e-3).resolved()
        command = trainer_command(hp)
        assert "--nnodes=2" in command and f"--node_rank={node_rank}" in command
        nodes.append(subprocess.Popen(command, cwd=ROOT, env=trainer_env(extras_for(data, tiny_model_dir, out, hp),
                                                                       OMP_NUM_THREADS="1"),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [node.communicate(timeout=420)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["samples_per_step"], metrics["steps"]) == (2, 4, 2)
    assert metrics["train_tokens"] == sum(len(r["input_ids"]) for r in rows)   # 2 steps x 4 = the 8 rows once
