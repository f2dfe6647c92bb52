"""LoRA fine-tuning recipe, run outside Dagster through Dagster Pipes.

Read top to bottom: arguments -> data -> model + LoRA -> Trainer -> save -> report.
The same file runs as one CPU process, or under `torchrun --nproc_per_node N` on GPUs; only rank 0
talks to Dagster. It imports `dagster_pipes` and never `dagster`.

Extras sent by the `lora_checkpoint` asset:
  data_path, base_model_dir, output_dir, fingerprint, format, hyperparameters (dict)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

from dagster_pipes import PipesContext, open_dagster_pipes


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _RankLogger:
    """Stand-in for the Pipes logger on ranks other than 0."""

    def info(self, message: str) -> None:
        print(message, flush=True)

    warning = error = info


def run(pipes: PipesContext | None) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from gcrp_assets.lib.formats import chat_template, get_format
    from gcrp_assets.lib.hashing import sha256_file
    from gcrp_assets.lib.plots import loss_curve_png, markdown_image
    from gcrp_assets.lib.precision import resolve_precision
    from gcrp_assets.lib.training_data import collate, load_split

    log = pipes.log if pipes else _RankLogger()
    # Every rank needs the arguments; only rank 0 opens the Pipes channel, so they also travel by env.
    extras = pipes.extras if pipes else json.loads(os.environ["GCRP_TRAIN_EXTRAS"])
    hp = extras["hyperparameters"]
    data_path = Path(extras["data_path"])
    output_dir = Path(extras["output_dir"])
    partial_dir = output_dir.with_name(output_dir.name + ".partial")

    # 1. Device and precision. A GPU-only request on a CPU machine fails here, not deep in a library.
    has_cuda = torch.cuda.is_available()
    precision = resolve_precision(hp["precision"])
    torch.manual_seed(hp["seed"])

    # 2. Data: pre-tokenized rows, labels already masked by the tokenized_parquet stage.
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
    log.info(f"train rows {len(train_rows)}, eval rows {len(eval_rows)}, longest {longest} tokens, precision {precision}")

    # 3. Base model + LoRA adapter.
    tokenizer = AutoTokenizer.from_pretrained(extras["base_model_dir"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(extras["base_model_dir"], dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=hp["rank"], lora_alpha=hp["alpha"], lora_dropout=hp["dropout"],
                      target_modules=list(hp["target_modules"]), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    log.info(f"LoRA r={hp['rank']} alpha={hp['alpha']} on {hp['target_modules']}: {trainable:,} of {total:,} parameters train")

    # 4. The Hugging Face Trainer, with loss curves streamed back to Dagster.
    history: list[dict] = []

    class ReportLosses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not is_main_process():
                return
            entry = {"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
            history.append(entry)
            log.info("metrics " + json.dumps(entry, sort_keys=True))

    scratch = output_dir.with_name(output_dir.name + ".trainer")
    args = TrainingArguments(
        output_dir=str(scratch),
        num_train_epochs=hp["num_epochs"],
        max_steps=hp["max_steps"] if hp["max_steps"] > 0 else -1,
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation_steps"],
        learning_rate=hp["learning_rate"],
        lr_scheduler_type=hp["lr_scheduler"],
        warmup_steps=hp["warmup_steps"],
        weight_decay=hp["weight_decay"],
        logging_steps=hp["logging_steps"],
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=hp["eval_steps"] or (hp["max_steps"] if hp["max_steps"] > 0 else None),
        eval_on_start=bool(eval_rows),  # step 0 eval = the base model (LoRA B starts at zero)
        save_strategy="no",
        report_to=[],
        seed=hp["seed"],
        data_seed=hp["seed"],
        use_cpu=not has_cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows or None,
        data_collator=lambda rows: collate(rows, pad_id),
        callbacks=[ReportLosses()],
    )
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    steps = result.global_step

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if not is_main_process():
        return

    # 5. Save: adapter (safetensors + adapter_config.json), tokenizer with the chat template,
    #    the resolved config, the loss history and plot. Written aside, then renamed into place.
    shutil.rmtree(partial_dir, ignore_errors=True)
    model.save_pretrained(partial_dir, safe_serialization=True)
    fmt = get_format(extras["format"])
    tokenizer.chat_template = chat_template(fmt)
    tokenizer.save_pretrained(partial_dir)
    png = loss_curve_png(history)
    (partial_dir / "loss_curve.png").write_bytes(png)
    (partial_dir / "loss_history.json").write_text(json.dumps(history, indent=1))
    resolved = {"hyperparameters": hp, "precision": precision, "format": extras["format"],
                "base_model_dir": extras["base_model_dir"], "data_path": str(data_path),
                "fingerprint": extras["fingerprint"], "train_rows": len(train_rows), "eval_rows": len(eval_rows),
                "stop_strings": list(fmt.stop_strings), "steps": steps}
    (partial_dir / "training_config.json").write_text(json.dumps(resolved, indent=1, sort_keys=True))
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(partial_dir, output_dir)
    shutil.rmtree(scratch, ignore_errors=True)

    adapter_sha = sha256_file(output_dir / "adapter_model.safetensors")
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    train_losses = [h["loss"] for h in history if "loss" in h]
    tokens_seen = _tokens_seen(train_rows, steps, hp)
    metadata = {
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(tokens_seen / seconds, 1) if seconds else 0.0,
        "final_train_loss": train_losses[-1] if train_losses else float("nan"),
        "eval_loss_start": evals[0] if evals else float("nan"),
        "eval_loss_end": evals[-1] if evals else float("nan"),
        "trainable_parameters": trainable,
        "precision": precision,
        "loss_table": {"raw_value": _loss_table(history), "type": "md"},
        "loss_curve": {"raw_value": markdown_image(png, "loss curve"), "type": "md"},
        "adapter_sha256": adapter_sha,
    }
    finite = all(math.isfinite(x) for x in train_losses + evals)
    if pipes:
        pipes.report_asset_check(check_name="loss_is_finite", passed=finite, severity="ERROR",
                                 metadata={"final_train_loss": metadata["final_train_loss"]})
        pipes.report_asset_materialization(metadata=metadata, data_version=adapter_sha)
    log.info(f"saved adapter to {output_dir} after {steps} steps in {seconds:.0f}s")


def _tokens_seen(rows: list[dict], steps: int, hp: dict) -> int:
    per_step = hp["batch_size"] * hp["gradient_accumulation_steps"]
    mean_len = sum(len(r["input_ids"]) for r in rows) / len(rows)
    return int(steps * per_step * mean_len)


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
    if is_main_process():
        with open_dagster_pipes() as pipes:
            run(pipes)
    else:
        with nullcontext():
            run(None)
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # avoids rare aborts at interpreter exit after success
    except ImportError:
        pass


if __name__ == "__main__":
    main()
