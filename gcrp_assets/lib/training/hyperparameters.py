"""The LoRA run's settings, grouped by concern; each declared once: type, `smoke` default, help text.

`LoraConfig` (`orchestration/training_config.py`) is generated from these groups with flat field names (what
the Launchpad, the CLI and the recipes use), and `recipes.DEFAULTS` is their defaults. The trainer receives
the resolved flat values (Pipes extras, JSON) and parses them once into `Hyperparameters`, then reads
`hp.lora.rank`, `hp.optimizer.learning_rate`, ... A field's default is the `smoke` recipe's value; a field
marked `preset=False` (`recipe`, `allow_cpu`, `force`) is never filled by a recipe and keeps a plain default.

Plain Python, no Dagster and no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


def setting(default: Any, help: str, *, preset: bool = True, choices: tuple = ()) -> Any:
    """A setting with its `smoke` default and help text; `preset=False`: not a recipe's to set; `choices`: its
    valid values, where there is a fixed set (documentation and tests; the run checks them where it uses them)."""
    metadata = {"help": help, "preset": preset, **({"choices": choices} if choices else {})}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class LoraSettings:
    """The adapter."""
    rank: int = setting(16, "LoRA r.")
    alpha: int = setting(32, "LoRA alpha.")
    dropout: float = setting(0.05, "LoRA dropout.")
    use_rslora: bool = setting(False, "Rank-stabilised LoRA scaling (alpha/sqrt(r)).")
    target_modules: tuple[str, ...] = setting(("q_proj", "k_proj", "v_proj", "o_proj"), "Modules to adapt.")


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimizer, learning-rate schedule, training length and batch geometry."""
    # smoke: 5e-3 x 24 steps, chosen by measurement (benchmarks/smoke_sweep.py; the sweep is in the README).
    learning_rate: float = setting(5e-3, "Peak learning rate.")
    lr_scheduler: str = setting("cosine", "Any transformers scheduler name (cosine, linear, constant, "
                                          "warmup_stable_decay…).")
    warmup_steps: int = setting(2, "Linear warm-up steps.")
    wsd_stable_epochs: float = setting(0.0, "warmup_stable_decay: epochs at the peak rate (0: all that warm-up and "
                                            "decay leave).")
    wsd_decay_epochs: float = setting(0.0, "warmup_stable_decay: epochs of (cosine) decay; 0 = an immediate drop.")
    min_lr_ratio: float = setting(0.0, "warmup_stable_decay: rate after the decay, as a share of the peak, kept "
                                       "until the end.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    optim: str = setting("adamw_torch", "transformers optimizer name (adamw_torch, adamw_bnb_8bit, paged_adamw_8bit "
                                        "on a GPU…).")
    num_epochs: float = setting(1.0, "Epochs over the train split (ignored when max_steps > 0).")
    max_steps: int = setting(24, "Optimizer steps; 0 = use num_epochs.")
    batch_size: int = setting(1, "Per-device micro-batch size (samples).")
    gradient_accumulation_steps: int = setting(1, "Micro-batches per optimizer step (ignored when "
                                                  "global_batch_size > 0).")
    global_batch_size: int = setting(0, "Samples per optimizer step over all processes; sets the accumulation "
                                        "from batch_size x world size. 0 = not used.")


@dataclass(frozen=True)
class ModelSettings:
    """How the base model is loaded and run: precision, quantization, memory, attention."""
    precision: str = setting("auto", "'auto' (bf16 where the hardware has it), 'bf16', 'fp16', 'fp32'.",
                             choices=("auto", "bf16", "fp16", "fp32"))
    load_in_8bit: bool = setting(False, "Load the base model in 8-bit (bitsandbytes LLM.int8).")
    load_in_4bit: bool = setting(False, "Load the base model in 4-bit (bitsandbytes, QLoRA).")
    bnb_4bit_quant_type: str = setting("nf4", "4-bit data type: 'nf4' or 'fp4'.", choices=("nf4", "fp4"))
    bnb_4bit_use_double_quant: bool = setting(True, "4-bit: also quantize the quantization constants.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass (about half the "
                                                  "memory, 10-30 % slower).")
    attn_implementation: str = setting("auto", "'auto' (flash_attention_2 on CUDA when installed, else "
                                               "sdpa_packed when packing, sdpa when padded), or a transformers name.")

    @property
    def quantized(self) -> bool:
        return self.load_in_8bit or self.load_in_4bit


@dataclass(frozen=True)
class DataSettings:
    """What the trainer expects of tokenized_parquet and how it batches it."""
    format: str = setting("", "Prompt format the recipe expects from tokenized_parquet ('inst', 'herrsimian', …); "
                              "training fails if the data has another. '' = any.")
    max_length: int = setting(2048, "Refuse samples longer than this (tokenized_parquet windows the data to fit).")
    packing: bool = setting(True, "Padding-free packing: a micro-batch's samples concatenated into one row, "
                                  "positions restarting per sample, no attention across samples. false = "
                                  "right-padded batches.")
    eval_rows_in_training: int = setting(4, "Eval rows scored during training (0 = all); eval_report always scores "
                                            "the whole eval split.")


@dataclass(frozen=True)
class LaunchSettings:
    """Processes, nodes and DeepSpeed."""
    launcher: str = setting("python", "'python' (one process), 'torchrun' or 'deepspeed'.",
                            choices=("python", "torchrun", "deepspeed"))
    nproc_per_node: int = setting(1, "Processes per node (one per GPU) under torchrun / deepspeed.")
    zero_stage: int = setting(0, "DeepSpeed ZeRO stage: 0 = no DeepSpeed, 2, or 3.", choices=(0, 2, 3))
    offload_optimizer: bool = setting(False, "DeepSpeed: keep optimizer states on the CPU.")
    nnodes: int = setting(1, "Nodes; start the same run on every node with its node_rank.")
    node_rank: int = setting(0, "This node's rank (multi-node).")
    master_addr: str = setting("127.0.0.1", "Address of node 0 (multi-node).")
    master_port: int = setting(29500, "Rendezvous port on node 0.")
    hostfile: str = setting("", "DeepSpeed multi-node: MPI-style hostfile naming every node.")


@dataclass(frozen=True)
class RunSettings:
    """Run control: the preset, reproducibility, checkpoints, logging and evaluation cadence, outputs."""
    recipe: str = setting("smoke", "Preset: 'smoke' (CPU defaults), 'party-12b' (8-bit LoRA, ZeRO-2, 2 GPUs), "
                                   "'herrsimian-8b' (4-bit QLoRA, WSD, 12k context). Its values fill only the "
                                   "fields not set here.", preset=False)
    allow_cpu: bool = setting(False, "Run a GPU recipe on a machine without CUDA anyway (tiny models, tests); "
                                     "without it such a run fails at once.", preset=False)
    force: bool = setting(False, "Retrain from scratch even when a finished adapter or checkpoints with this "
                                 "fingerprint exist.", preset=False)
    seed: int = setting(0, "Training seed.")
    save_steps: int = setting(10, "Write a resumable checkpoint every this many steps (and at the end).")
    save_total_limit: int = setting(2, "Newest checkpoints kept in the run folder (0 = all).")
    merge: bool = setting(False, "Also write the base model with the adapter merged in (merged/); the base is "
                                 "reloaded unquantized in CPU memory for it.")
    logging_steps: int = setting(1, "Log the train loss (a loss-curve point and a progress line) every this many "
                                    "steps; raise it for runs of thousands of steps.")
    eval_steps: int = setting(0, "Log the eval loss every this many steps (and at step 0 = the base model); 0 = "
                                  "only at the start and the end.")


# Group name in `Hyperparameters` -> its settings; this order is the Launchpad's.
GROUPS: dict[str, type] = {"run": RunSettings, "data": DataSettings, "lora": LoraSettings,
                           "optimizer": OptimizerSettings, "model": ModelSettings, "launch": LaunchSettings}


def settings_fields() -> list[tuple[type, dataclasses.Field]]:
    """Every setting as (its group's class, its dataclass field), in Launchpad order."""
    return [(cls, f) for cls in GROUPS.values() for f in dataclasses.fields(cls)]


def flat_defaults(preset: bool = True) -> dict[str, Any]:
    """{name: default} of the settings a recipe may set (`preset=True`: the `smoke` values), or of the others;
    tuples as lists, as the flat (JSON, Launchpad) values have them."""
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for _, f in settings_fields() if f.metadata["preset"] == preset}


@dataclass(frozen=True)
class Hyperparameters:
    """The resolved LoraConfig, by concern."""
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    launch: LaunchSettings = field(default_factory=LaunchSettings)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> Hyperparameters:
        """The typed settings from flat resolved values (`LoraConfig.resolved()`, the trainer's extras). Every
        setting a recipe may set must be there; `recipe`, `allow_cpu` and `force` default as in LoraConfig."""
        known = {f.name for _, f in settings_fields()}
        unknown = sorted(set(values) - known)
        missing = sorted(f.name for _, f in settings_fields() if f.metadata["preset"] and f.name not in values)
        if unknown or missing:
            raise ValueError(f"hyperparameters: unknown {unknown}, missing {missing}")
        groups = {}
        for name, group in GROUPS.items():
            kwargs = {}
            for f in dataclasses.fields(group):
                if f.name in values:
                    value = values[f.name]
                    kwargs[f.name] = tuple(value) if isinstance(f.default, tuple) else value
            groups[name] = group(**kwargs)
        return cls(**groups)

    def flat(self) -> dict[str, Any]:
        """The flat values again (tuples as lists), as `LoraConfig.resolved()` gives them."""
        return {f.name: list(v) if isinstance(v := getattr(getattr(self, name), f.name), tuple) else v
                for name, group in GROUPS.items() for f in dataclasses.fields(group)}
