"""Shared helpers of the training tests (no tests here): a small synthetic tokenized set, an artifact store
whose upstream assets are recorded without running the data stages, and running the trainer module."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from gcrp_assets.orchestration.artifacts import write_manifest
from gcrp_assets.lib.formats.tokenization import IGNORE

ROOT = Path(__file__).resolve().parents[1]


def synthetic_rows(n_train: int = 12, n_eval: int = 2, seed: int = 0, fmt: str = "inst",
                   lengths: tuple[int, int] = (40, 160)) -> list[dict]:
    """Rows shaped like tokenized_parquet's: BOS, random tokens, the first third masked."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_train + n_eval):
        n = rng.randint(*lengths)
        ids = [1] + [rng.randrange(100, 40_000) for _ in range(n - 1)]
        labels = [IGNORE if j < n // 3 else t for j, t in enumerate(ids)]
        split = "train" if i < n_train else "eval"
        rows.append({"sample_id": f"s{i}", "window": 0, "thread_key": f"t{i}", "split": split, "format": fmt,
                     "input_ids": ids, "labels": labels, "n_trained": sum(l != IGNORE for l in labels),
                     "n_tokens": n})
    return rows


def write_tokenized(folder: Path, rows: list[dict], fmt: str = "inst", max_length: int = 2048) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "tokenized.parquet")
    write_manifest(folder, f"synthetic-{fmt}", f"synthetic-{fmt}-v1", {},
                   {"config": {"format": fmt, "max_length": max_length}, "augmented_prompts": {}})
    return folder


def test_instance(tmp_path: Path):
    """A throwaway Dagster instance under `tmp_path` (not a test)."""
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return dg.instance_for_test(temp_dir=str(home))


test_instance.__test__ = False


def record_upstream(instance: dg.DagsterInstance, data_dir: Path, model_dir: Path, data_version: str = "tok-v1") -> None:
    """Record tokenized_parquet and base_model as materialized, pointing at ready folders."""
    for key, path, version in (("tokenized_parquet", data_dir, data_version), ("base_model", model_dir, "tiny-v1")):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=key, metadata={"path": dg.MetadataValue.path(str(path)), "data_version": version}))


def trainer_env(extras: dict, **extra_env: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env.update({"GCRP_TRAIN_EXTRAS": json.dumps(extras), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                "DS_ACCELERATOR": "cpu", **extra_env})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_trainer(command: list[str], extras: dict, timeout: int = 240, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=trainer_env(extras, **extra_env), capture_output=True, text=True,
                          timeout=timeout)


def extras_for(data_dir: Path, model_dir: Path, out: Path, hp: dict, fmt: str = "inst") -> dict:
    return {"data_path": str(data_dir / "tokenized.parquet"), "base_model_dir": str(model_dir),
            "output_dir": str(out), "run_dir": str(out.with_name(out.name + ".run")), "fingerprint": "test",
            "format": fmt, "data_max_length": None, "recipe_fields": [], "hyperparameters": hp}


def python() -> str:
    return sys.executable


def adapter_changes_the_model(model_dir: Path, adapter: Path) -> bool:
    """Whether the trained adapter changes the base model's logits on a short input (LoRA B starts at 0)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)
    ids = torch.tensor([[1, 75, 39637, 77, 3980, 198]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    return (adapted - plain).abs().max().item() > 0
