"""Sweep of the `smoke` recipe: settings → held-out model-turn loss drop and training wall time.

Run from the repository root:

    .venv/bin/python -m benchmarks.smoke_sweep --data artifacts/tokenized_parquet/<fp>/tokenized.parquet \
        --base-model artifacts/base_model/<fp> --out /tmp/smoke_sweep

Each setting trains with this project's trainer (`python -m gcrp_assets.trainer.train`, as `lora_checkpoint`
runs it, no Dagster) on the tokenized sample corpus, then scores the whole eval split teacher-forced in bf16
where the CPU has it (as `eval_report`): model-turn loss of base and adapter, the relative drop, and the
cluster-bootstrap 95 % CI over threads of the token-weighted difference (`metrics.cluster_bootstrap_difference`).
Settings run one after another; on a shared CPU compare wall times within one sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name -> LoraConfig fields that differ from the recipe's defaults
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS: dict[str, dict] = {
    "lr3e-3_24": {"learning_rate": 3e-3, "max_steps": 24},
    "lr3e-3_16": {"learning_rate": 3e-3, "max_steps": 16},
    "lr2e-3_18_mlp": {"learning_rate": 2e-3, "max_steps": 18, "target_modules": ALL_LINEAR},
    "lr5e-3_24": {"learning_rate": 5e-3, "max_steps": 24},
    "lr1e-3_16": {"learning_rate": 1e-3, "max_steps": 16},
}


def train(name: str, fields: dict, data: Path, model: Path, out: Path) -> dict:
    from gcrp_assets.orchestration.training_config import LoraConfig

    hp = LoraConfig(eval_steps=0, eval_rows_in_training=1, logging_steps=4, save_steps=1000, **fields).resolved()
    folder = out / name
    extras = {"data_path": str(data), "base_model_dir": str(model), "output_dir": str(folder / "adapter"),
              "run_dir": str(folder / "run"), "fingerprint": name, "format": "inst", "data_max_length": None,
              "recipe_fields": [], "hyperparameters": hp}
    env = {**os.environ, "GCRP_TRAIN_EXTRAS": json.dumps(extras),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("DAGSTER_PIPES_CONTEXT", None)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "gcrp_assets.trainer.train"], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    if rc:
        raise SystemExit(f"{name}: trainer failed (rc {rc}), see {folder / 'train.log'}")
    metrics = json.loads((folder / "adapter" / "metrics.json").read_text())
    return {"wall_s": time.perf_counter() - started, "train_s": metrics["train_seconds"],
            "tokens": metrics["train_tokens"], "adapter": folder / "adapter"}


def eval_losses(model_dir: Path, adapter: Path | None, rows: list[dict]) -> list[tuple[float, int]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gcrp_assets.lib.evaluation.losses import per_row_nll
    from gcrp_assets.lib.training.precision import autocast, resolve_precision

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with autocast(resolve_precision("auto")):
        return per_row_nll(model, rows, pad_id=0, batch_size=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    args = parser.parse_args()
    from gcrp_assets.lib.evaluation import metrics as em
    from gcrp_assets.lib.training.data import load_split

    data, model, out = Path(args.data), Path(args.base_model), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_split(data, "eval")
    base_file = out / "base.json"
    if not base_file.exists():
        base_file.write_text(json.dumps(eval_losses(model, None, rows)))
    base = json.loads(base_file.read_text())
    for name, fields in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        result_file = out / f"{name}.json"
        if result_file.exists():
            print(result_file.read_text(), flush=True)
            continue
        t = train(name, fields, data, model, out)
        adapter = eval_losses(model, t["adapter"], rows)
        sums = {}
        for row, (nb, tok), (na, _) in zip(rows, base, adapter):
            s = sums.setdefault(row["thread_key"], [0.0, 0.0, 0])
            s[0] += nb
            s[1] += na
            s[2] += tok
        keys = sorted(sums)
        diff, low, high = em.cluster_bootstrap_difference([sums[k][0] for k in keys], [sums[k][1] for k in keys],
                                                          [sums[k][2] for k in keys], 10_000, seed=0)
        loss_base = sum(n for n, _ in base) / sum(t for _, t in base)
        loss_adapter = sum(n for n, _ in adapter) / sum(t for _, t in adapter)
        result = {"setting": name, **fields, "train_s": round(t["train_s"], 1), "wall_s": round(t["wall_s"], 1),
                  "train_tokens": t["tokens"], "loss_base": round(loss_base, 4), "loss_adapter": round(loss_adapter, 4),
                  "drop_pct": round(100 * (1 - loss_adapter / loss_base), 2), "diff": round(diff, 4),
                  "ci": [round(low, 4), round(high, 4)], "load_avg": round(os.getloadavg()[0], 1)}
        result_file.write_text(json.dumps(result))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
