"""Named training recipes (presets of `LoraConfig` fields), as data; plus the checks a recipe implies.

A recipe fills only the fields the user did not set: `resolve(values, explicitly_set)` takes a field
from the config when it was set (pydantic's `model_fields_set`, value not None), else from the recipe,
else from `DEFAULTS` (the `smoke` values, today's CPU defaults). The config's fields default to None
rather than to these values because Dagster drops every run-config entry equal to a field's default
before it builds the config: with concrete defaults, `dropout: 0.05` on the Launchpad would be
indistinguishable from no `dropout` at all, and a recipe's 0.55 would win over it. The recipes record the
two model cards' settings (the project's reference notes on roleplay data, section 1); settings a card does not state keep the project defaults and are listed in
`not_on_card`.

GPU-only recipes on a machine without CUDA fail before any subprocess starts, with the reason, unless
`allow_cpu: true` (then the same settings run on the CPU: 8-bit/4-bit bitsandbytes, DeepSpeed over gloo
and multi-process all work there, which is how the tests cover them with a tiny model). Features no CPU
can run (fp16, flash-attention 2, paged optimizers) fail on a CPU whatever `allow_cpu` says.

Plain Python, no Dagster and no torch: the trainer imports this too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gcrp_assets.lib.training.hyperparameters import flat_defaults


# The `smoke` recipe: what every field is when neither the config nor the chosen recipe sets it; the defaults
# declared with each setting in `hyperparameters.py` (tuples as lists, as the config's values are).
DEFAULTS: dict[str, Any] = flat_defaults()


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    gpus: int                        # CUDA GPUs the recipe is sized for; 0 = runs on a CPU as is
    values: dict[str, Any]           # LoraConfig field -> value
    source: str = ""
    not_on_card: tuple[str, ...] = field(default=())


RECIPES: dict[str, Recipe] = {
    "smoke": Recipe(
        name="smoke",
        description="The CPU defaults: a short LoRA run that finishes in minutes on any machine.",
        gpus=0,
        values={},   # = DEFAULTS
        source="project defaults",
    ),
    "party-12b": Recipe(
        name="party-12b",
        description="Sao10K/MN-BackyardAI-Party-12B-v1: 8-bit LoRA, DeepSpeed ZeRO-2 on 2 GPUs, cosine, "
                    "lr 4e-6, 3 epochs, global batch 12, [INST] group format.",
        gpus=2,
        values={
            "format": "inst",
            "load_in_8bit": True,
            "launcher": "deepspeed",
            "nproc_per_node": 2,
            "zero_stage": 2,
            "offload_optimizer": False,
            "lr_scheduler": "cosine",
            "learning_rate": 4e-6,
            "num_epochs": 3.0,
            "max_steps": 0,
            "batch_size": 1,
            "global_batch_size": 12,
            "gradient_checkpointing": True,
            "save_steps": 50,
        },
        source="model card (roleplay-data.md §1.1); axolotl deepspeed_configs/zero2.json without CPU offload",
        not_on_card=("rank", "alpha", "dropout", "target_modules", "warmup_steps", "weight_decay", "max_length",
                     "micro-batch vs accumulation split of the global batch"),
    ),
    "herrsimian-8b": Recipe(
        name="herrsimian-8b",
        description="lemonilia/Llama-3.1-Herrsimian-8B v0.5b: 4-bit nf4 QLoRA (double quant) r128/α256, "
                    "dropout 0.55, lr 9.5e-5, wd 0.01, WSD (3 stable epochs, then 25 % to epoch 5), batch 1, "
                    "12,288 context, raw `herrsimian` format.",
        gpus=1,
        values={
            "format": "herrsimian",
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "rank": 128,
            "alpha": 256,
            "dropout": 0.55,
            "use_rslora": False,
            "learning_rate": 9.5e-5,
            "weight_decay": 0.01,
            "warmup_steps": 0,
            "lr_scheduler": "warmup_stable_decay",
            "wsd_stable_epochs": 3.0,
            "wsd_decay_epochs": 0.0,
            "min_lr_ratio": 0.25,
            "num_epochs": 5.0,
            "max_steps": 0,
            "batch_size": 1,
            "gradient_accumulation_steps": 1,
            "global_batch_size": 0,
            "max_length": 12288,
            "gradient_checkpointing": True,
            "save_steps": 50,
        },
        source="model card (roleplay-data.md §1.2; seeds/004): Unsloth QLoRA on one RTX 3090",
        not_on_card=("target_modules", "optimizer"),
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]


def resolve(values: dict[str, Any], explicitly_set: set[str] | frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every field of `values` resolved: set explicitly (and not None) > the recipe's preset > `DEFAULTS`.
    Returns (resolved values, the presets of the recipe that were applied)."""
    recipe = get_recipe(values.get("recipe") or "smoke")
    unknown = sorted(set(recipe.values) - set(values))
    if unknown:
        raise ValueError(f"recipe {recipe.name!r} sets unknown fields {unknown}")
    resolved, applied = {}, {}
    for key, value in values.items():
        if key in explicitly_set and value is not None:
            resolved[key] = value
        elif key in recipe.values:
            resolved[key] = applied[key] = recipe.values[key]
        elif key in DEFAULTS:
            resolved[key] = DEFAULTS[key]
        else:
            resolved[key] = value
    return resolved, applied


def hardware_problems(hp: dict[str, Any], cuda_devices: int) -> list[str]:
    """Why this configuration cannot run on a machine with `cuda_devices` CUDA GPUs (empty: it can)."""
    problems = []
    recipe = get_recipe(hp.get("recipe", "smoke"))
    if cuda_devices == 0:
        if recipe.gpus and not hp.get("allow_cpu"):
            problems.append(
                f"recipe {recipe.name!r} is sized for {recipe.gpus} CUDA GPU(s) ({recipe.description}) and this "
                "machine has none. Use recipe 'smoke' on a CPU, or set allow_cpu: true to run these settings on "
                "the CPU anyway (sensible only with a tiny base model).")
        if hp.get("precision") == "fp16":
            problems.append("precision 'fp16' needs a CUDA GPU; use 'auto', 'bf16' or 'fp32' on a CPU.")
        if hp.get("attn_implementation", "auto").startswith("flash_attention"):
            problems.append(f"attn_implementation {hp['attn_implementation']!r} needs a CUDA GPU; use 'auto' "
                            "(packed SDPA on a CPU).")
        if "paged" in hp.get("optim", ""):
            problems.append(f"optim {hp['optim']!r} (paged bitsandbytes optimizer) needs a CUDA GPU; use "
                            "'adamw_torch' or 'adamw_bnb_8bit' on a CPU.")
    else:
        if hp.get("nproc_per_node", 1) > cuda_devices:
            problems.append(f"nproc_per_node {hp['nproc_per_node']} > the {cuda_devices} CUDA GPU(s) of this "
                            "machine.")
    if hp.get("load_in_8bit") and hp.get("load_in_4bit"):
        problems.append("load_in_8bit and load_in_4bit are exclusive.")
    if (hp.get("load_in_8bit") or hp.get("load_in_4bit")) and hp.get("zero_stage") == 3:
        problems.append("ZeRO-3 cannot shard bitsandbytes-quantized weights; use zero_stage 2 (or 0).")
    if hp.get("zero_stage") not in (0, 2, 3):
        problems.append(f"zero_stage {hp.get('zero_stage')!r}: use 0 (no DeepSpeed), 2 or 3.")
    if hp.get("launcher") == "deepspeed" and not hp.get("zero_stage"):
        problems.append("launcher 'deepspeed' needs zero_stage 2 or 3.")
    if hp.get("launcher") == "python" and (hp.get("nproc_per_node", 1) > 1 or hp.get("nnodes", 1) > 1):
        problems.append("launcher 'python' runs one process: use 'torchrun' or 'deepspeed' for nproc_per_node > 1 "
                        "or nnodes > 1.")
    return problems


def format_problem(hp: dict[str, Any], data_formats: set[str]) -> str | None:
    """Why the tokenized data does not fit the recipe's prompt format (None: it does). The format and the
    sample length are decided by `tokenized_parquet`; the recipe only states what it was designed for."""
    wanted = hp.get("format", "")
    if not wanted or data_formats == {wanted}:
        return None
    found = ", ".join(sorted(data_formats)) or "(none)"
    return (f"recipe {hp.get('recipe', 'smoke')!r} trains on prompt format {wanted!r}, but tokenized_parquet was "
            f"built with format {found}. Re-materialize tokenized_parquet with `format: {wanted}` (and `max_length: "
            f"{hp.get('max_length')}`), or set `format: \"\"` in this config to train on the data as it is.")


def deepspeed_config(hp: dict[str, Any], precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON for `zero_stage` 2 or 3: batch sizes, accumulation, clipping and the optimizer are
    left to the HF Trainer ("auto"); no CPU offload unless `offload_optimizer`. Without offload the optimizer
    stays the Trainer's torch AdamW, so nothing has to be JIT-compiled. With offload the JSON names DeepSpeed's
    AdamW, which DeepSpeed runs as its vectorized DeepSpeedCPUAdam (JIT-compiled once, cached in
    $TORCH_EXTENSIONS_DIR): a torch optimizer stepping offloaded states is several times slower."""
    zero: dict[str, Any] = {
        "stage": hp["zero_stage"],
        "contiguous_gradients": True,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": "auto",
        "allgather_bucket_size": 5e8,
    }
    if hp["zero_stage"] == 3:
        zero.pop("allgather_bucket_size")
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     "stage3_gather_16bit_weights_on_model_save": True})
    optimizer = {}
    if hp.get("offload_optimizer"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        # "auto" takes learning rate, betas, epsilon and weight decay from the Trainer's arguments.
        optimizer = {"optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                               "weight_decay": "auto"}}}
    return {
        **optimizer,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
