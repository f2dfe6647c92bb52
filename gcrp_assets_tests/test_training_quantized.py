"""The herrsimian-8b recipe on a CPU (allow_cpu) with the tiny model: a 4-bit nf4 double-quant base with
LoRA trains, and the learning rate logged at every step follows warmup-stable-decay (3 stable epochs at the
peak, then 25 % until the end of epoch 5). 8-bit loading is covered by test_training_zero2 (party-12b)."""

import json

import pytest
from safetensors.torch import load_file

from gcrp_assets.orchestration.training_config import LoraConfig
from gcrp_assets_tests.test_training_support import extras_for, python, run_trainer, synthetic_rows, write_tokenized


def test_herrsimian_recipe_trains_a_4bit_qlora_on_the_wsd_schedule(tmp_path, tiny_model_dir):
    data = write_tokenized(tmp_path / "tok", synthetic_rows(n_train=2, n_eval=1, fmt="herrsimian", lengths=(30, 60)),
                           fmt="herrsimian", max_length=12288)
    # Card settings from the recipe; only the size (r, alpha) and the test knobs are set here.
    hp = LoraConfig(recipe="herrsimian-8b", allow_cpu=True, rank=8, alpha=16, logging_steps=1, eval_steps=0,
                    precision="fp32", save_steps=100).resolved()
    out = tmp_path / "adapter"
    done = run_trainer([python(), "-m", "gcrp_assets.trainer.train"],
                       extras_for(data, tiny_model_dir, out, hp, fmt="herrsimian"), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quantization"].startswith("4-bit nf4 double-quant") and "Linear4bit" in metrics["quantization"]
    assert metrics["steps"] == 10   # 2 rows, batch 1: 2 steps/epoch x 5 epochs
    history = json.loads((out / "loss_history.json").read_text())
    rates = {h["step"]: h["learning_rate"] for h in history if "learning_rate" in h}
    assert sorted(rates) == list(range(1, 11))
    for step in range(1, 7):            # epochs 1-3
        assert rates[step] == pytest.approx(9.5e-5), step
    for step in range(7, 11):           # epochs 4-5
        assert rates[step] == pytest.approx(9.5e-5 * 0.25), step
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"], config["use_rslora"]) == (8, 16, 0.55, False)
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())   # LoRA B left zero: it trained
