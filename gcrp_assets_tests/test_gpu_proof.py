"""benchmarks/gpu_proof.py at toy size on a CPU: every row runs the project's trainer (or the eval generation)
and reports tokens/s, peak memory (RSS; MFU n/a) and finite losses, in the table and the JSON.

lora-packed runs in its own worker process, as every row does on a GPU; the other rows run inside the test's
process (`--in-process`), since importing torch/transformers/peft is most of a toy row's time. The ZeRO-2
row is left out (DeepSpeed JIT-compiles its CPU collective, ~1 min on a busy machine); test_training_zero2
covers that path of the trainer."""

import json
import math

import pytest

from benchmarks import gpu_proof


@pytest.mark.parametrize("toy", [True, False])
def test_row_hyperparameters_are_what_lora_config_resolves(toy):
    """The script resolves the recipes without Dagster, through the function LoraConfig.resolved() uses."""
    from gcrp_assets.orchestration.training_config import LoraConfig

    for name, plan in gpu_proof.row_plans(toy=toy, cuda=not toy).items():
        expected = LoraConfig(recipe=plan["recipe"], allow_cpu=toy, **plan["set"]).resolved()
        assert plan["hp"] == expected, name
    plans = gpu_proof.row_plans(toy=False, cuda=True)
    assert plans["lora-8bit"]["hp"]["load_in_8bit"] and plans["lora-8bit"]["hp"]["zero_stage"] == 0
    assert plans["zero2-8bit"]["hp"]["launcher"] == "deepspeed" and plans["zero2-8bit"]["hp"]["zero_stage"] == 2
    herrsimian = plans["qlora-4bit-wsd"]["hp"]
    assert herrsimian["load_in_4bit"] and herrsimian["lr_scheduler"] == "warmup_stable_decay"
    assert (herrsimian["bnb_4bit_quant_type"], herrsimian["bnb_4bit_use_double_quant"]) == ("nf4", True)


def test_flops_formula_and_steady_window():
    from transformers import LlamaConfig

    shape = gpu_proof.model_flops_shape(LlamaConfig(vocab_size=49152, **gpu_proof.PROOF_MODEL))
    assert 1.0e9 < shape["matmul_params"] < 1.2e9   # Llama-3.2-1B's shape with SmolLM2's vocabulary
    lora_aware, six_n = gpu_proof.train_flops(shape, lora_params=0, tokens=10, squares=0)
    assert lora_aware == 4 * shape["matmul_params"] * 10 and six_n == 6 * shape["matmul_params"] * 10
    marks = [{"step": s, "t": float(s), "tokens": 100 * s, "squares": 0} for s in range(0, 6)]
    assert gpu_proof.steady_window(marks) == {"from_step": 2, "to_step": 5, "seconds": 3.0, "tokens": 300,
                                              "squares": 0}


def test_toy_run_reports_every_row(tmp_path, smol_tokenizer_dir, capsys):
    out = tmp_path / "rows.json"
    report = gpu_proof.main(["--toy", "--assets", str(tmp_path / "assets"), "--tokenizer", str(smol_tokenizer_dir),
                             "--work", str(tmp_path / "work"), "--out", str(out), "--skip", "zero2-8bit",
                             "--in-process", "lora-padded,lora-8bit,qlora-4bit-wsd,generation",
                             "--threads", "1", "--row-timeout", "180"])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"], default=str))
    expected = [r for r in gpu_proof.ROWS if r != "zero2-8bit"]
    assert [r["row"] for r in saved["rows"]] == expected
    rows = {r["row"]: r for r in saved["rows"]}
    for name, row in rows.items():
        assert row["ok"], (name, row.get("error"), row.get("log_tail"))
        assert row["tokens_per_second"] > 0, name
        assert row["peak_memory_mb"] > 0 and row["peak_memory_kind"] in ("cpu_max_rss", "cpu_rss_hwm_of_row"), name
        assert row["ran"] == ("own process" if name == "lora-packed" else "in the calling process"), name
        assert row["mfu"] is None, name
        assert f"| {name} |" in printed
    for name in expected[:-1]:
        row = rows[name]
        assert row["steps"] > 0 and row["loss_finite"] and len(row["losses"]) == row["steps"], name
        assert all(math.isfinite(x) for x in row["losses"]) and math.isfinite(row["loss_last"]), name
        assert row["steady_tokens_per_second"] > 0, name
    assert rows["lora-packed"]["packing"] and rows["lora-packed"]["padding_waste"] == 0.0
    assert not rows["lora-padded"]["packing"]
    # Same rows, same seed: packed and padded batches give the same first loss.
    assert rows["lora-packed"]["loss_first"] == pytest.approx(rows["lora-padded"]["loss_first"], rel=1e-4)
    assert rows["lora-8bit"]["quantization"].startswith("8-bit")
    assert rows["qlora-4bit-wsd"]["quantization"].startswith("4-bit nf4 double-quant")
    assert rows["qlora-4bit-wsd"]["wsd_schedule_ok"]
    assert rows["generation"]["generated_tokens"] > 0 and rows["generation"]["adapter"]
    assert "n/a (CPU)" in printed and saved["cuda"] is False and saved["toy"] is True
