"""LoRA fine-tuning recipe, run outside Dagster through Dagster Pipes.

`run` reads as the recipe: arguments -> hardware -> data -> batch geometry and schedule -> base model ->
LoRA -> run folder -> optimizer and schedule (the Trainer's arguments) -> train (or resume) -> save ->
report; each step is a function below it, in that order, then the callbacks and the helpers. The same file
runs as one process, under `torchrun --nproc_per_node N`, or under the `deepspeed` launcher (ZeRO-2/3 from
a generated JSON); only rank 0 talks to Dagster. It imports `dagster_pipes` and never `dagster`.

Extras sent by the `lora_checkpoint` asset (also read from $GCRP_TRAIN_EXTRAS, so every rank has them
and the module runs without Dagster too):
  data_path, base_model_dir, output_dir, run_dir, fingerprint, format, data_max_length, recipe_fields,
  hyperparameters (the resolved LoraConfig, flat; parsed once into `lib.training.hyperparameters.Hyperparameters`)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from dagster_pipes import PipesContext, open_dagster_pipes
from transformers import TrainerCallback

from gcrp_assets.lib.formats.chat_format import chat_template, get_format
from gcrp_assets.lib.hashing import sha256_file
from gcrp_assets.lib.plots import loss_curve_png, markdown_image
from gcrp_assets.lib.progress import SEPARATOR, Phases, duration, fraction, progress_line, remaining_seconds, scientific
from gcrp_assets.lib.training.data import data_formats, load_split, losses_are_finite
from gcrp_assets.lib.training.hyperparameters import Hyperparameters
from gcrp_assets.lib.training.packing import Collator, attention_for
from gcrp_assets.lib.training.precision import resolve_precision
from gcrp_assets.lib.training.recipes import deepspeed_config, format_problem, hardware_problems
from gcrp_assets.lib.training.schedules import accumulation_steps, scheduler_kwargs, steps_per_epoch, total_steps

GRADIENT_CHECKPOINTING_KWARGS = {"use_reentrant": False}
# The run's phases as the log names them (`phase 3/4 · train (16 steps) · 40 s so far`).
PHASES = ("read the data", "load the base model", "train", "save the adapter")


# ---------------------------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------------------------

def run(pipes: PipesContext | None) -> None:
    log = pipes.log if pipes else _RankLogger()
    # Every rank needs the arguments; only rank 0 opens the Pipes channel, so they also travel by env.
    job = Job.from_extras(pipes.extras if pipes else json.loads(os.environ["GCRP_TRAIN_EXTRAS"]))
    hp = job.hp

    hardware = setup_hardware(hp)
    phases = Phases(list(PHASES), log.info if is_main_process() else lambda message: None)
    phases.start("read the data")
    data = load_data(job, hardware, log)
    plan = plan_steps(hp, len(data.train), hardware.world_size, log)
    phases.start("load the base model")
    base = load_base_model(job, hardware)
    model, trainable = wrap_lora(base, hp, log)
    folder = prepare_run_folder(job, hardware)
    args = training_arguments(hp, plan, hardware, folder, base, has_eval=bool(data.eval))
    collator = Collator(packing=hp.data.packing, pad_id=base.pad_id)
    progress = ReportProgress(log, tokens=lambda: collator.counts.real, world_size=hardware.world_size)
    trainer = build_trainer(model, args, data, collator, [progress, PublishCheckpoints(folder, hp.run.save_total_limit)])
    phases.start("train", f"{plan.max_steps} steps")
    outcome = train(trainer, collator, folder, plan, log)
    phases.start("save the adapter")
    if not save_adapter(trainer, job):   # every rank saves (ZeRO-3 gathers); only rank 0 goes on
        return
    history, png = write_outputs(job, hardware, data, plan, base, folder, trainer, outcome, log)
    report(pipes, job, hardware, plan, base, folder, trainer, trainable, outcome, history, png, progress.streamed, log)


# ---------------------------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """What the asset asks for: the Pipes extras, the hyperparameters parsed once into their typed form."""
    hp: Hyperparameters
    hyperparameters: dict[str, Any]      # as received: recorded in training_config.json
    recipe_fields: list[str]
    data_path: Path
    base_model_dir: str
    format: str
    data_max_length: int | None
    fingerprint: str
    output_dir: Path
    run_dir: Path

    @property
    def partial_dir(self) -> Path:
        return self.output_dir.with_name(self.output_dir.name + ".partial")

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> Job:
        output_dir = Path(extras["output_dir"])
        return cls(hp=Hyperparameters.from_flat(extras["hyperparameters"]),
                   hyperparameters=extras["hyperparameters"], recipe_fields=extras.get("recipe_fields", []),
                   data_path=Path(extras["data_path"]), base_model_dir=extras["base_model_dir"],
                   format=extras["format"], data_max_length=extras.get("data_max_length"),
                   fingerprint=extras["fingerprint"], output_dir=output_dir,
                   run_dir=Path(extras.get("run_dir") or output_dir.with_name(output_dir.name + ".run")))


@dataclass(frozen=True)
class Hardware:
    has_cuda: bool
    world_size: int
    local_rank: int
    precision: str      # resolved: 'bf16', 'fp16' or 'fp32'


def setup_hardware(hp: Hyperparameters) -> Hardware:
    """1. Hardware. A GPU-only request on a CPU machine fails here, before any model or data is loaded."""
    has_cuda = torch.cuda.is_available()
    problems = hardware_problems(hp.flat(), torch.cuda.device_count() if has_cuda else 0)
    if problems:
        raise SystemExit("cannot train here: " + " ".join(problems))
    if not has_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if hp.launch.zero_stage and "RANK" not in os.environ:  # DeepSpeed in a single plain process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(_free_port()))
    hardware = Hardware(has_cuda=has_cuda, world_size=int(os.environ.get("WORLD_SIZE", "1")),
                        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                        precision=resolve_precision(hp.model.precision))
    torch.manual_seed(hp.run.seed)
    return hardware


@dataclass(frozen=True)
class Data:
    train: list[dict]
    eval: list[dict]
    longest: int


def load_data(job: Job, hardware: Hardware, log) -> Data:
    """2. Data: pre-tokenized rows, labels already masked by the tokenized_parquet stage, in the recipe's format."""
    hp = job.hp
    problem = format_problem(hp.flat(), data_formats(job.data_path) or {job.format})
    if problem:
        raise SystemExit(problem)
    train_rows = load_split(job.data_path, "train")
    eval_rows = load_split(job.data_path, "eval")
    wanted = hp.data.eval_rows_in_training
    if wanted > 0:
        # An evenly spread, fixed subset keeps the in-training curve cheap; eval_report scores every row.
        step = max(len(eval_rows) // wanted, 1)
        eval_rows = eval_rows[::step][:wanted]
    if not train_rows:
        raise SystemExit(f"{job.data_path}: no rows in the train split")
    longest = max(len(r["input_ids"]) for r in train_rows + eval_rows)
    max_length = hp.data.max_length
    if max_length and longest > max_length:
        raise SystemExit(f"{job.data_path}: a sample has {longest} tokens > max_length {max_length}; "
                         "re-materialize tokenized_parquet with the same max_length")
    if job.data_max_length and max_length and job.data_max_length != max_length:
        log.warning(f"tokenized_parquet was windowed at max_length {job.data_max_length}, the recipe "
                    f"expects {max_length}")
    log.info(f"train rows {len(train_rows)}, eval rows {len(eval_rows)}, longest {longest} tokens, "
             f"precision {hardware.precision}, format {job.format}, recipe {hp.run.recipe}")
    return Data(train_rows, eval_rows, longest)


@dataclass(frozen=True)
class StepPlan:
    accumulation: int
    per_epoch: int
    max_steps: int
    scheduler_kwargs: dict[str, Any]


def plan_steps(hp: Hyperparameters, n_rows: int, world_size: int, log) -> StepPlan:
    """3. Batch geometry and schedule, in optimizer steps (epochs converted as the HF Trainer counts them)."""
    flat, batch = hp.flat(), hp.optimizer.batch_size
    accumulation = accumulation_steps(flat, world_size)
    per_epoch = steps_per_epoch(n_rows, batch, world_size, accumulation)
    plan = StepPlan(accumulation, per_epoch, total_steps(flat, per_epoch), scheduler_kwargs(flat, per_epoch))
    log.info(f"{world_size} process(es) x batch {batch} x accumulation {accumulation} = "
             f"{world_size * batch * accumulation} samples/step; {per_epoch} steps/epoch, "
             f"{plan.max_steps} steps; {hp.optimizer.lr_scheduler} {plan.scheduler_kwargs or ''}")
    return plan


@dataclass(frozen=True)
class BaseModel:
    model: Any
    tokenizer: Any
    pad_id: int
    attn: str               # the attention implementation loaded
    quantized: bool
    quant_name: str         # what the loaded weights really are
    dtype: Any


def load_base_model(job: Job, hardware: Hardware) -> BaseModel:
    """4. Base model, optionally 8-bit / 4-bit nf4 with bitsandbytes (prepared for k-bit training)."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    settings, precision = job.hp.model, hardware.precision
    tokenizer = AutoTokenizer.from_pretrained(job.base_model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    attn = attention_for(job.hp.data.packing, settings.attn_implementation)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    quantization = None
    if settings.load_in_4bit:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=settings.bnb_4bit_quant_type,
                                          bnb_4bit_use_double_quant=settings.bnb_4bit_use_double_quant,
                                          bnb_4bit_compute_dtype=compute_dtype)
    elif settings.load_in_8bit:
        quantization = BitsAndBytesConfig(load_in_8bit=True)
    # On a GPU the weights load in the training precision; on a CPU in fp32 (bf16 runs as autocast).
    dtype = compute_dtype if hardware.has_cuda and precision != "fp32" else torch.float32
    device_map = ({"": hardware.local_rank} if hardware.has_cuda else "cpu") if quantization else None
    model = AutoModelForCausalLM.from_pretrained(job.base_model_dir, dtype=dtype, attn_implementation=attn,
                                                 quantization_config=quantization, device_map=device_map)
    model.config.use_cache = False
    quant_name = _quantization_summary(model)
    if quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing,
                                                gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
    return BaseModel(model, tokenizer, pad_id, attn, quantization is not None, quant_name, dtype)


def wrap_lora(base: BaseModel, hp: Hyperparameters, log) -> tuple[Any, int]:
    """5. The LoRA adapter around the base model; returns (model, trainable parameters)."""
    from peft import LoraConfig, get_peft_model

    lora = hp.lora
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_rslora=lora.use_rslora,
                        target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base.model, config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info(f"LoRA r={lora.rank} alpha={lora.alpha} on {list(lora.target_modules)}: {trainable:,} of {total:,} "
             f"parameters train; quantization {base.quant_name}; attention {base.attn}; packing {hp.data.packing}")
    return model, trainable


@dataclass(frozen=True)
class RunFolder:
    checkpoints: Path             # complete checkpoints only
    staging: Path                 # where the Trainer writes one
    resume_from: Path | None      # the newest complete checkpoint of this fingerprint
    deepspeed: dict | None        # the DeepSpeed JSON (zero_stage 2 or 3)


def prepare_run_folder(job: Job, hardware: Hardware) -> RunFolder:
    """6. Run folder: resumable checkpoints keyed by the fingerprint; the DeepSpeed config next to them."""
    run_dir, zero_stage = job.run_dir, job.hp.launch.zero_stage
    checkpoints, staging = run_dir / "checkpoints", run_dir / "staging"
    resume_from = _newest_checkpoint(checkpoints)
    launch = {"fingerprint": job.fingerprint, "world_size": hardware.world_size, "zero_stage": zero_stage}
    if resume_from and json.loads((run_dir / "launch.json").read_text()) != launch:
        raise SystemExit(f"{run_dir} holds checkpoints of a run launched as "
                         f"{(run_dir / 'launch.json').read_text().strip()}, not {json.dumps(launch)}: "
                         "relaunch it the same way, or set force: true to start over")
    ds_config = deepspeed_config(job.hp.flat(), hardware.precision) if zero_stage else None
    if is_main_process():
        shutil.rmtree(staging, ignore_errors=True)  # a checkpoint half-written when the last run died
        checkpoints.mkdir(parents=True, exist_ok=True)
        (run_dir / "launch.json").write_text(json.dumps(launch, sort_keys=True))
        if ds_config:
            (run_dir / "deepspeed.json").write_text(json.dumps(ds_config, indent=1))
    _barrier()
    return RunFolder(checkpoints, staging, resume_from, ds_config)


def training_arguments(hp: Hyperparameters, plan: StepPlan, hardware: Hardware, folder: RunFolder,
                       base: BaseModel, has_eval: bool):
    """7. Optimizer, schedule, precision, evaluation and checkpoint cadence: the HF Trainer's arguments."""
    from transformers import TrainingArguments

    opt, run_settings, precision = hp.optimizer, hp.run, hardware.precision
    return TrainingArguments(
        output_dir=str(folder.staging),
        num_train_epochs=opt.num_epochs,
        max_steps=plan.max_steps,
        per_device_train_batch_size=opt.batch_size,
        per_device_eval_batch_size=opt.batch_size,
        gradient_accumulation_steps=plan.accumulation,
        learning_rate=opt.learning_rate,
        lr_scheduler_type=opt.lr_scheduler,
        lr_scheduler_kwargs=plan.scheduler_kwargs,
        warmup_steps=opt.warmup_steps,
        weight_decay=opt.weight_decay,
        optim=opt.optim,
        logging_steps=run_settings.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=run_settings.eval_steps or plan.max_steps,
        eval_on_start=has_eval and folder.resume_from is None,  # step 0 eval = the base model (LoRA B = 0)
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=run_settings.save_steps,
        save_total_limit=None,  # pruning happens in checkpoints/, see PublishCheckpoints
        report_to=[],
        seed=run_settings.seed,
        data_seed=run_settings.seed,
        use_cpu=not hardware.has_cuda,  # also what makes accelerate see all ranks on a CPU (MULTI_CPU)
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=hp.model.gradient_checkpointing and not base.quantized,  # kbit prep already did
        gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS,
        deepspeed=folder.deepspeed,
        ddp_find_unused_parameters=False if hardware.world_size > 1 and not folder.deepspeed else None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def build_trainer(model, args, data: Data, collator: Collator, callbacks: list[TrainerCallback]):
    """The Hugging Face Trainer, with loss curves streamed back to Dagster and atomic checkpoints."""
    from transformers import Trainer

    return Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval or None,
                   data_collator=collator, callbacks=callbacks)


@dataclass(frozen=True)
class Outcome:
    steps: int
    seconds: float
    cpu_seconds: float
    real_tokens: int          # summed over ranks, as the two below
    slots: int
    padded_slots: int


def train(trainer, collator: Collator, folder: RunFolder, plan: StepPlan, log) -> Outcome:
    """8. Train, or resume from the newest complete checkpoint of this fingerprint."""
    resume_from = folder.resume_from
    if resume_from:
        log.info(f"resuming from {resume_from} (step {_step_of(resume_from)} of {plan.max_steps})")
    started, cpu_started = time.perf_counter(), time.process_time()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    real, slots, padded = _sum_over_ranks([collator.counts.real, collator.counts.slots, collator.counts.padded_slots])
    return Outcome(result.global_step, seconds, cpu_seconds, real, slots, padded)


def save_adapter(trainer, job: Job) -> bool:
    """9. The adapter (safetensors + adapter_config.json), written aside by every rank (ZeRO-3 gathers it; rank 0
    writes). True on rank 0, which writes the rest."""
    if is_main_process():
        shutil.rmtree(job.partial_dir, ignore_errors=True)
    _barrier()
    trainer.save_model(str(job.partial_dir))
    _barrier()
    return is_main_process()


def write_outputs(job: Job, hardware: Hardware, data: Data, plan: StepPlan, base: BaseModel, folder: RunFolder,
                  trainer, outcome: Outcome, log) -> tuple[list[dict], bytes]:
    """10. Beside the adapter: the tokenizer with the chat template, the resolved config, the loss history and
    plot, and the merged model when asked. Returns (loss history, plot)."""
    partial_dir, hp = job.partial_dir, job.hp
    (partial_dir / "training_args.bin").unlink(missing_ok=True)
    fmt = get_format(job.format)
    base.tokenizer.chat_template = chat_template(fmt)
    base.tokenizer.save_pretrained(partial_dir)
    history = [{"step": h["step"], **{k: v for k, v in h.items() if isinstance(v, (int, float))}}
               for h in trainer.state.log_history if "step" in h]
    png = loss_curve_png(history)
    (partial_dir / "loss_curve.png").write_bytes(png)
    (partial_dir / "loss_history.json").write_text(json.dumps(history, indent=1))
    resume_from = folder.resume_from
    resolved = {"hyperparameters": job.hyperparameters, "recipe": hp.run.recipe, "recipe_fields": job.recipe_fields,
                "precision": hardware.precision, "format": job.format, "attn_implementation": base.attn,
                "quantization": base.quant_name, "deepspeed": folder.deepspeed, "world_size": hardware.world_size,
                "gradient_accumulation_steps": plan.accumulation, "steps_per_epoch": plan.per_epoch,
                "max_steps": plan.max_steps, "lr_scheduler_kwargs": plan.scheduler_kwargs,
                "base_model_dir": job.base_model_dir, "data_path": str(job.data_path), "fingerprint": job.fingerprint,
                "train_rows": len(data.train), "eval_rows": len(data.eval), "stop_strings": list(fmt.stop_strings),
                "steps": outcome.steps, "resumed_from": str(resume_from) if resume_from else None}
    (partial_dir / "training_config.json").write_text(json.dumps(resolved, indent=1, sort_keys=True))
    if hp.run.merge:
        _merge(job.base_model_dir, partial_dir, base.tokenizer,
               dtype=torch.bfloat16 if hardware.precision == "bf16" else torch.float32)
        log.info("merged the adapter into the base model: merged/")
    return history, png


def report(pipes: PipesContext | None, job: Job, hardware: Hardware, plan: StepPlan, base: BaseModel,
           folder: RunFolder, trainer, trainable: int, outcome: Outcome, history: list[dict], png: bytes,
           streamed: list[dict], log) -> None:
    """11. Metrics (throughput counts real (sample) tokens over the training time without evaluations), the
    output folder renamed into place, and the materialization and loss check reported to Dagster."""
    hp, world_size = job.hp, hardware.world_size
    seconds, cpu_seconds, real = outcome.seconds, outcome.cpu_seconds, outcome.real_tokens
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in streamed)
    train_seconds = max(seconds - eval_seconds, 1e-9)
    peak_mb, peak_kind = _peak_memory_mb(hardware.has_cuda)
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    train_losses = [h["loss"] for h in history if "loss" in h]
    metrics = {
        "steps": outcome.steps,
        "max_steps": plan.max_steps,
        "resumed_from_step": _step_of(folder.resume_from) if folder.resume_from else 0,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(real / train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),   # this process; less sensitive to other jobs than wall time
        "tokens_per_cpu_second": round(real / world_size / cpu_seconds, 1) if cpu_seconds else 0.0,
        "train_tokens": real,
        "padding_waste": round(1 - real / outcome.slots, 4) if outcome.slots else 0.0,
        "padding_waste_if_padded": round(1 - real / outcome.padded_slots, 4) if outcome.padded_slots else 0.0,
        "packing": hp.data.packing,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        "final_train_loss": train_losses[-1] if train_losses else float("nan"),
        "eval_loss_start": evals[0] if evals else float("nan"),
        "eval_loss_end": evals[-1] if evals else float("nan"),
        "trainable_parameters": trainable,
        "precision": hardware.precision,
        "recipe": hp.run.recipe,
        "quantization": base.quant_name,
        "attn_implementation": base.attn,
        "world_size": world_size,
        "zero_stage": hp.launch.zero_stage,
        "optimizer": _optimizer_name(trainer),
        "base_optimizer": _base_optimizer_name(trainer),
        "gradient_accumulation_steps": plan.accumulation,
        "samples_per_step": world_size * hp.optimizer.batch_size * plan.accumulation,
        "adapter_sha256": sha256_file(job.partial_dir / "adapter_model.safetensors"),
    }
    (job.partial_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    shutil.rmtree(job.output_dir, ignore_errors=True)
    os.replace(job.partial_dir, job.output_dir)  # run_dir stays until the asset has recorded the adapter

    metadata = {**metrics,
                "loss_table": {"raw_value": _loss_table(history), "type": "md"},
                "loss_curve": {"raw_value": markdown_image(png, "loss curve"), "type": "md"}}
    if pipes:
        pipes.report_asset_check(check_name="loss_is_finite", passed=losses_are_finite(history), severity="ERROR",
                                 metadata={"final_train_loss": metadata["final_train_loss"]})
        pipes.report_asset_materialization(metadata=metadata, data_version=metrics["adapter_sha256"])
    log.info(f"saved adapter to {job.output_dir} after {outcome.steps} steps in {seconds:.0f}s "
             f"({metrics['tokens_per_second']} tokens/s, padding waste {metrics['padding_waste']:.1%})")


# ---------------------------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------------------------

class ReportProgress(TrainerCallback):
    """Training progress in the run log as it comes (rank 0), one line a person reads at a glance:

    - each logging step: `step 5/16 (31 %) · loss 2.86 · lr 5.0e-4 · 229 tok/s · ETA 2 min`;
    - between logging steps, the same without loss and lr once `quiet_seconds` passed without a line;
    - each evaluation: `eval at step 8/16 (50 %) · eval loss 2.914 · 3 s`; at the end, the Trainer's summary.

    Throughput and ETA count the steps and the real (sample) tokens of this run (a resumed run starts its clock
    at the step it resumed from) over the training time without evaluations. Every logged entry is kept in
    `streamed` (the report's evaluation time); the loss history itself is `loss_history.json`.
    """

    def __init__(self, log, tokens: Callable[[], int], world_size: int = 1, quiet_seconds: float = 30.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.log, self.tokens, self.world_size = log, tokens, world_size
        self.quiet_seconds, self.clock = quiet_seconds, clock
        self.streamed: list[dict] = []
        self._started = self._last_line = 0.0
        self._first_step = self._first_tokens = 0
        self._eval_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = self._last_line = self.clock()
        self._first_step, self._first_tokens = state.global_step, self.tokens()

    def _line(self, state, fields: list[str]) -> str:
        seconds = max(self.clock() - self._started - self._eval_seconds, 1e-9)
        # Every rank collates as many rows as rank 0, so its count times the world size is the run's.
        rate = (self.tokens() - self._first_tokens) * self.world_size / seconds
        eta = remaining_seconds(state.global_step - self._first_step, state.max_steps - self._first_step, seconds)
        self._last_line = self.clock()
        return progress_line("step", state.global_step, state.max_steps, [*fields, f"{rate:.0f} tok/s"], eta)

    def on_step_end(self, args, state, control, **kwargs):
        # control.should_log: this step's log line follows in on_log.
        if is_main_process() and not control.should_log and self.clock() - self._last_line >= self.quiet_seconds:
            self.log.info(self._line(state, []))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not is_main_process():
            return
        entry = {"step": state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
        self.streamed.append(entry)
        if "eval_loss" in entry:
            self._eval_seconds += entry.get("eval_runtime", 0.0)
            self.log.info(SEPARATOR.join([f"eval at step {fraction(state.global_step, state.max_steps)}",
                                          f"eval loss {entry['eval_loss']:.3f}",
                                          duration(entry.get("eval_runtime"))]))
        elif "loss" in entry:
            fields = [f"loss {entry['loss']:.2f}"]
            if "learning_rate" in entry:
                fields.append(f"lr {scientific(entry['learning_rate'])}")
            self.log.info(self._line(state, fields))
        elif "train_runtime" in entry:
            self.log.info(SEPARATOR.join([f"trained {state.global_step - self._first_step} steps",
                                          f"mean loss {entry.get('train_loss', float('nan')):.2f}",
                                          duration(entry["train_runtime"])]))


class PublishCheckpoints(TrainerCallback):
    """The Trainer writes checkpoint-N into staging/; once every rank is done, it is renamed into
    checkpoints/ (atomic on one file system), so checkpoints/ only ever holds complete checkpoints."""

    def __init__(self, folder: RunFolder, save_total_limit: int):
        self.staging, self.checkpoints, self.save_total_limit = folder.staging, folder.checkpoints, save_total_limit

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if state.is_world_process_zero:
            written = self.staging / f"checkpoint-{state.global_step}"
            if written.is_dir() and not (self.checkpoints / written.name).exists():
                os.replace(written, self.checkpoints / written.name)
            for old in sorted(self.checkpoints.glob("checkpoint-*"), key=_step_of)[:-self.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------

def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _RankLogger:
    """Stand-in for the Pipes logger on ranks other than 0, and when run without Dagster."""

    def info(self, message: str) -> None:
        print(message, flush=True)

    warning = error = info


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
    import torch.distributed as dist

    device = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.long, device=device)
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def _peak_memory_mb(has_cuda: bool) -> tuple[float, str]:
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
