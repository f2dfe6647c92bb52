"""LoRA fine-tuning recipe, run outside Dagster through Dagster Pipes.

Read top to bottom: arguments -> hardware -> data -> batch geometry -> model + LoRA -> run folder ->
Trainer -> train (or resume) -> save -> report. The same file runs as one process, under
`torchrun --nproc_per_node N`, or under the `deepspeed` launcher (ZeRO-2/3 from a generated JSON); only
rank 0 talks to Dagster. It imports `dagster_pipes` and never `dagster`.

Extras sent by the `lora_checkpoint` asset (also read from $GCRP_TRAIN_EXTRAS, so every rank has them
and the module runs without Dagster too):
  data_path, base_model_dir, output_dir, run_dir, fingerprint, format, data_max_length, recipe_fields,
  hyperparameters (the resolved LoraConfig)

Outputs in output_dir (renamed into place when complete): adapter_model.safetensors, adapter_config.json,
the tokenizer with the format's chat template, training_config.json (resolved), loss_history.json,
loss_curve.png, metrics.json, and merged/ when `merge: true`. Checkpoints go to run_dir/checkpoints/,
each written by the HF Trainer into run_dir/staging/ and renamed when complete; a killed run started
again with the same fingerprint resumes from the newest one and ends at the same step count.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import time
from pathlib import Path

from dagster_pipes import PipesContext, open_dagster_pipes


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _RankLogger:
    """Stand-in for the Pipes logger on ranks other than 0, and when run without Dagster."""

    def info(self, message: str) -> None:
        print(message, flush=True)

    warning = error = info


def run(pipes: PipesContext | None) -> None:
    import torch

    from gcrp_assets.lib.formats.chat_format import chat_template, get_format
    from gcrp_assets.lib.hashing import sha256_file
    from gcrp_assets.lib.training.packing import Collator, attention_for
    from gcrp_assets.lib.plots import loss_curve_png, markdown_image
    from gcrp_assets.lib.training.precision import resolve_precision
    from gcrp_assets.lib.training.recipes import deepspeed_config, format_problem, hardware_problems
    from gcrp_assets.lib.training.schedules import (accumulation_steps, scheduler_kwargs, steps_per_epoch,
                                                    total_steps)
    from gcrp_assets.lib.training.data import data_formats, load_split, losses_are_finite

    log = pipes.log if pipes else _RankLogger()
    # Every rank needs the arguments; only rank 0 opens the Pipes channel, so they also travel by env.
    extras = pipes.extras if pipes else json.loads(os.environ["GCRP_TRAIN_EXTRAS"])
    hp = extras["hyperparameters"]
    data_path = Path(extras["data_path"])
    output_dir = Path(extras["output_dir"])
    run_dir = Path(extras.get("run_dir") or output_dir.with_name(output_dir.name + ".run"))
    partial_dir = output_dir.with_name(output_dir.name + ".partial")

    # 1. Hardware. A GPU-only request on a CPU machine fails here, before any model or data is loaded.
    has_cuda = torch.cuda.is_available()
    problems = hardware_problems(hp, torch.cuda.device_count() if has_cuda else 0)
    if problems:
        raise SystemExit("cannot train here: " + " ".join(problems))
    if not has_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if hp["zero_stage"] and "RANK" not in os.environ:  # DeepSpeed in a single plain process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(_free_port()))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    precision = resolve_precision(hp["precision"])
    torch.manual_seed(hp["seed"])

    # 2. Data: pre-tokenized rows, labels already masked by the tokenized_parquet stage, in the recipe's format.
    problem = format_problem(hp, data_formats(data_path) or {extras["format"]})
    if problem:
        raise SystemExit(problem)
    train_rows = load_split(data_path, "train")
    eval_rows = load_split(data_path, "eval")
    if hp["eval_rows_in_training"] > 0:
        # An evenly spread, fixed subset keeps the in-training curve cheap; eval_report scores every row.
        step = max(len(eval_rows) // hp["eval_rows_in_training"], 1)
        eval_rows = eval_rows[::step][: hp["eval_rows_in_training"]]
    if not train_rows:
        raise SystemExit(f"{data_path}: no rows in the train split")
    longest = max(len(r["input_ids"]) for r in train_rows + eval_rows)
    if hp["max_length"] and longest > hp["max_length"]:
        raise SystemExit(f"{data_path}: a sample has {longest} tokens > max_length {hp['max_length']}; "
                         "re-materialize tokenized_parquet with the same max_length")
    if extras.get("data_max_length") and hp["max_length"] and extras["data_max_length"] != hp["max_length"]:
        log.warning(f"tokenized_parquet was windowed at max_length {extras['data_max_length']}, the recipe "
                    f"expects {hp['max_length']}")
    log.info(f"train rows {len(train_rows)}, eval rows {len(eval_rows)}, longest {longest} tokens, "
             f"precision {precision}, format {extras['format']}, recipe {hp['recipe']}")

    # 3. Batch geometry and schedule, in optimizer steps (epochs converted as the HF Trainer counts them).
    accumulation = accumulation_steps(hp, world_size)
    per_epoch = steps_per_epoch(len(train_rows), hp["batch_size"], world_size, accumulation)
    max_steps = total_steps(hp, per_epoch)
    schedule = scheduler_kwargs(hp, per_epoch)
    log.info(f"{world_size} process(es) x batch {hp['batch_size']} x accumulation {accumulation} = "
             f"{world_size * hp['batch_size'] * accumulation} samples/step; {per_epoch} steps/epoch, "
             f"{max_steps} steps; {hp['lr_scheduler']} {schedule or ''}")

    # 4. Base model (optionally 8-bit / 4-bit nf4 with bitsandbytes) + LoRA adapter.
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(extras["base_model_dir"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    attn = attention_for(hp["packing"], hp["attn_implementation"])
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    quantization = None
    if hp["load_in_4bit"]:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=hp["bnb_4bit_quant_type"],
                                          bnb_4bit_use_double_quant=hp["bnb_4bit_use_double_quant"],
                                          bnb_4bit_compute_dtype=compute_dtype)
    elif hp["load_in_8bit"]:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    # On a GPU the weights load in the training precision; on a CPU in fp32 (bf16 runs as autocast).
    dtype = compute_dtype if has_cuda and precision != "fp32" else torch.float32
    device_map = ({"": local_rank} if has_cuda else "cpu") if quantization else None
    model = AutoModelForCausalLM.from_pretrained(extras["base_model_dir"], dtype=dtype, attn_implementation=attn,
                                                 quantization_config=quantization, device_map=device_map)
    model.config.use_cache = False
    quant_name = _quantization_summary(model)
    gc_kwargs = {"use_reentrant": False}
    if quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hp["gradient_checkpointing"],
                                                gradient_checkpointing_kwargs=gc_kwargs)
    lora = LoraConfig(r=hp["rank"], lora_alpha=hp["alpha"], lora_dropout=hp["dropout"], use_rslora=hp["use_rslora"],
                      target_modules=list(hp["target_modules"]), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    log.info(f"LoRA r={hp['rank']} alpha={hp['alpha']} on {hp['target_modules']}: {trainable:,} of {total:,} "
             f"parameters train; quantization {quant_name}; attention {attn}; packing {hp['packing']}")

    # 5. Run folder: resumable checkpoints keyed by the fingerprint; the DeepSpeed config next to them.
    checkpoints, staging = run_dir / "checkpoints", run_dir / "staging"
    resume_from = _newest_checkpoint(checkpoints)
    launch = {"fingerprint": extras["fingerprint"], "world_size": world_size, "zero_stage": hp["zero_stage"]}
    if resume_from and json.loads((run_dir / "launch.json").read_text()) != launch:
        raise SystemExit(f"{run_dir} holds checkpoints of a run launched as "
                         f"{(run_dir / 'launch.json').read_text().strip()}, not {json.dumps(launch)}: "
                         "relaunch it the same way, or set force: true to start over")
    ds_config = deepspeed_config(hp, precision) if hp["zero_stage"] else None
    if is_main_process():
        shutil.rmtree(staging, ignore_errors=True)  # a checkpoint half-written when the last run died
        checkpoints.mkdir(parents=True, exist_ok=True)
        (run_dir / "launch.json").write_text(json.dumps(launch, sort_keys=True))
        if ds_config:
            (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=1))
    _barrier()

    # 6. The Hugging Face Trainer, with loss curves streamed back to Dagster and atomic checkpoints.
    from transformers import Trainer, TrainerCallback, TrainingArguments

    streamed: list[dict] = []

    class ReportLosses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not is_main_process():
                return
            entry = {"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
            streamed.append(entry)
            log.info("metrics " + json.dumps(entry, sort_keys=True))

    class PublishCheckpoints(TrainerCallback):
        """The Trainer writes checkpoint-N into staging/; once every rank is done, it is renamed into
        checkpoints/ (atomic on one file system), so checkpoints/ only ever holds complete checkpoints."""

        def on_save(self, args, state, control, **kwargs):
            _barrier()
            if state.is_world_process_zero:
                written = staging / f"checkpoint-{state.global_step}"
                if written.is_dir() and not (checkpoints / written.name).exists():
                    os.replace(written, checkpoints / written.name)
                for old in sorted(checkpoints.glob("checkpoint-*"), key=_step_of)[:-hp["save_total_limit"]]:
                    shutil.rmtree(old, ignore_errors=True)
            _barrier()

    args = TrainingArguments(
        output_dir=str(staging),
        num_train_epochs=hp["num_epochs"],
        max_steps=max_steps,
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["batch_size"],
        gradient_accumulation_steps=accumulation,
        learning_rate=hp["learning_rate"],
        lr_scheduler_type=hp["lr_scheduler"],
        lr_scheduler_kwargs=schedule,
        warmup_steps=hp["warmup_steps"],
        weight_decay=hp["weight_decay"],
        optim=hp["optim"],
        logging_steps=hp["logging_steps"],
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=hp["eval_steps"] or max_steps,
        eval_on_start=bool(eval_rows) and resume_from is None,  # step 0 eval = the base model (LoRA B = 0)
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=hp["save_steps"],
        save_total_limit=None,  # pruning happens in checkpoints/, see PublishCheckpoints
        report_to=[],
        seed=hp["seed"],
        data_seed=hp["seed"],
        use_cpu=not has_cuda,  # also what makes accelerate see all ranks on a CPU (MULTI_CPU)
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=hp["gradient_checkpointing"] and not quantization,  # kbit prep already did
        gradient_checkpointing_kwargs=gc_kwargs,
        deepspeed=ds_config,
        ddp_find_unused_parameters=False if world_size > 1 and not ds_config else None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    collator = Collator(packing=hp["packing"], pad_id=pad_id)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=collator,
        callbacks=[ReportLosses(), PublishCheckpoints()],
    )

    # 7. Train, or resume from the newest complete checkpoint of this fingerprint.
    if resume_from:
        log.info(f"resuming from {resume_from} (step {_step_of(resume_from)} of {max_steps})")
    started, cpu_started = time.perf_counter(), time.process_time()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    steps = result.global_step
    counts = _sum_over_ranks([collator.counts.real, collator.counts.slots, collator.counts.padded_slots])

    # 8. Save: adapter (safetensors + adapter_config.json), tokenizer with the chat template, the resolved
    #    config, the loss history and plot. Written aside, then renamed into place.
    if is_main_process():
        shutil.rmtree(partial_dir, ignore_errors=True)
    _barrier()
    trainer.save_model(str(partial_dir))  # every rank: ZeRO-3 gathers the adapter; rank 0 writes
    _barrier()
    if not is_main_process():
        return
    (partial_dir / "training_args.bin").unlink(missing_ok=True)
    fmt = get_format(extras["format"])
    tokenizer.chat_template = chat_template(fmt)
    tokenizer.save_pretrained(partial_dir)
    history = [{"step": h["step"], **{k: v for k, v in h.items() if isinstance(v, (int, float))}}
               for h in trainer.state.log_history if "step" in h]
    png = loss_curve_png(history)
    (partial_dir / "loss_curve.png").write_bytes(png)
    (partial_dir / "loss_history.json").write_text(json.dumps(history, indent=1))
    resolved = {"hyperparameters": hp, "recipe": hp["recipe"], "recipe_fields": extras.get("recipe_fields", []),
                "precision": precision, "format": extras["format"], "attn_implementation": attn,
                "quantization": quant_name, "deepspeed": ds_config, "world_size": world_size,
                "gradient_accumulation_steps": accumulation, "steps_per_epoch": per_epoch, "max_steps": max_steps,
                "lr_scheduler_kwargs": schedule, "base_model_dir": extras["base_model_dir"],
                "data_path": str(data_path), "fingerprint": extras["fingerprint"], "train_rows": len(train_rows),
                "eval_rows": len(eval_rows), "stop_strings": list(fmt.stop_strings), "steps": steps,
                "resumed_from": str(resume_from) if resume_from else None}
    (partial_dir / "training_config.json").write_text(json.dumps(resolved, indent=1, sort_keys=True))
    if hp["merge"]:
        _merge(extras["base_model_dir"], partial_dir, tokenizer, dtype=torch.bfloat16 if precision == "bf16"
               else torch.float32)
        log.info("merged the adapter into the base model: merged/")

    # 9. Report: throughput counts real (sample) tokens over the training time without evaluations.
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in streamed)
    train_seconds = max(seconds - eval_seconds, 1e-9)
    real, slots, padded_slots = counts
    peak_mb, peak_kind = _peak_memory_mb(torch, has_cuda)
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    train_losses = [h["loss"] for h in history if "loss" in h]
    adapter_sha = sha256_file(partial_dir / "adapter_model.safetensors")
    metrics = {
        "steps": steps,
        "max_steps": max_steps,
        "resumed_from_step": _step_of(resume_from) if resume_from else 0,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(real / train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),   # this process; less sensitive to other jobs than wall time
        "tokens_per_cpu_second": round(real / world_size / cpu_seconds, 1) if cpu_seconds else 0.0,
        "train_tokens": real,
        "padding_waste": round(1 - real / slots, 4) if slots else 0.0,
        "padding_waste_if_padded": round(1 - real / padded_slots, 4) if padded_slots else 0.0,
        "packing": hp["packing"],
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        "final_train_loss": train_losses[-1] if train_losses else float("nan"),
        "eval_loss_start": evals[0] if evals else float("nan"),
        "eval_loss_end": evals[-1] if evals else float("nan"),
        "trainable_parameters": trainable,
        "precision": precision,
        "recipe": hp["recipe"],
        "quantization": quant_name,
        "attn_implementation": attn,
        "world_size": world_size,
        "zero_stage": hp["zero_stage"],
        "optimizer": _optimizer_name(trainer),
        "base_optimizer": _base_optimizer_name(trainer),
        "gradient_accumulation_steps": accumulation,
        "samples_per_step": world_size * hp["batch_size"] * accumulation,
        "adapter_sha256": adapter_sha,
    }
    (partial_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(partial_dir, output_dir)  # run_dir stays until the asset has recorded the adapter

    metadata = {**metrics,
                "loss_table": {"raw_value": _loss_table(history), "type": "md"},
                "loss_curve": {"raw_value": markdown_image(png, "loss curve"), "type": "md"}}
    finite = losses_are_finite(history)
    if pipes:
        pipes.report_asset_check(check_name="loss_is_finite", passed=finite, severity="ERROR",
                                 metadata={"final_train_loss": metadata["final_train_loss"]})
        pipes.report_asset_materialization(metadata=metadata, data_version=adapter_sha)
    log.info(f"saved adapter to {output_dir} after {steps} steps in {seconds:.0f}s "
             f"({metrics['tokens_per_second']} tokens/s, padding waste {metrics['padding_waste']:.1%})")


def _merge(base_model_dir: str, adapter_dir: Path, tokenizer, dtype) -> None:
    """The base model (reloaded unquantized) with the adapter merged in, as a plain checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(adapter_dir / "merged")
    tokenizer.save_pretrained(adapter_dir / "merged")


def _quantization_summary(model) -> str:
    """What the loaded weights really are, read from the modules (e.g. '4-bit nf4 double-quant: 14 Linear4bit')."""
    kinds: dict[str, int] = {}
    detail = ""
    for module in model.modules():
        name = type(module).__name__
        if name in ("Linear4bit", "Linear8bitLt"):
            kinds[name] = kinds.get(name, 0) + 1
            state = getattr(module.weight, "quant_state", None)
            if state is not None and not detail:
                detail = f"4-bit {state.quant_type}{' double-quant' if state.nested else ''}: "
            elif name == "Linear8bitLt" and not detail:
                detail = "8-bit: "
    if not kinds:
        return "none"
    return detail + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def _optimizer_name(trainer) -> str:
    """The optimizer that really steps: DeepSpeed's ZeRO optimizer under DeepSpeed, else the torch one."""
    engine_optimizer = getattr(trainer.model_wrapped, "optimizer", None) if trainer.is_deepspeed_enabled else None
    optimizer = engine_optimizer or trainer.optimizer
    while type(optimizer).__name__ in ("AcceleratedOptimizer", "DeepSpeedOptimizerWrapper") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return type(optimizer).__name__


def _base_optimizer_name(trainer) -> str:
    """The optimizer that updates the weights inside DeepSpeed's ZeRO wrapper (DeepSpeedCPUAdam when the
    optimizer states are offloaded), else the same as `_optimizer_name`."""
    basic = getattr(trainer.model_wrapped, "basic_optimizer", None) if trainer.is_deepspeed_enabled else None
    return type(basic).__name__ if basic is not None else _optimizer_name(trainer)


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def _newest_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("checkpoint-*") if p.name.rsplit("-", 1)[1].isdigit()] if folder.is_dir() else []
    return max(found, key=_step_of) if found else None


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        import torch.distributed as dist

        dist.barrier()


def _sum_over_ranks(values: list[int]) -> list[int]:
    if not _distributed():
        return values
    import torch
    import torch.distributed as dist

    device = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def _peak_memory_mb(torch, has_cuda: bool) -> tuple[float, str]:
    if has_cuda:
        return round(torch.cuda.max_memory_allocated() / 2**20, 1), "cuda_max_allocated"
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "cpu_max_rss"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_table(history: list[dict]) -> str:
    rows = ["| step | train loss | eval loss | learning rate |", "|---:|---:|---:|---:|"]
    by_step: dict[int, dict] = {}
    for h in history:
        by_step.setdefault(h["step"], {}).update(h)
    for step in sorted(by_step):
        h = by_step[step]
        if "loss" not in h and "eval_loss" not in h:
            continue
        fmt = lambda k, p=4: f"{h[k]:.{p}f}" if k in h else ""
        rows.append(f"| {step} | {fmt('loss')} | {fmt('eval_loss')} | {h['learning_rate']:.2e} |"
                    if "learning_rate" in h else f"| {step} | {fmt('loss')} | {fmt('eval_loss')} | |")
    return "\n".join(rows)


def main() -> None:
    # Rank 0 of a run launched by Dagster opens the Pipes channel; other ranks, and runs without Dagster
    # (tests, a shell), read the same arguments from $GCRP_TRAIN_EXTRAS and log to stdout.
    if is_main_process() and "DAGSTER_PIPES_CONTEXT" in os.environ:
        with open_dagster_pipes() as pipes:
            run(pipes)
    else:
        run(None)
    if _distributed():
        import torch.distributed as dist

        dist.destroy_process_group()  # avoids rare aborts at interpreter exit after success


if __name__ == "__main__":
    main()
