"""Run configuration of lora_checkpoint (Launchpad, `--config-json`, or `-c run.yaml`).

`recipe` picks a preset (`gcrp_assets/lib/training/recipes.py`): its values apply to every field you leave unset;
a field you set always wins, even when you set it to the `smoke` value. Unset fields show as `null` and
resolve to the recipe's value, else to the `smoke` default named in each description (today's CPU
defaults). Only `recipe`, `allow_cpu` and `force` have plain defaults. `resolved()` gives the values a
run uses; the asset fingerprints those, so `recipe: smoke` and an equivalent explicit config share
one adapter.
"""

from typing import Any, Optional

import dagster as dg
from pydantic import Field

from gcrp_assets.lib.training.recipes import DEFAULTS, resolve


def _f(name: str, text: str):
    """A field left to the recipe: None until set; the description names the smoke default."""
    return Field(None, description=f"{text} Unset: the recipe's value (smoke: {DEFAULTS[name]!r}).")


class LoraConfig(dg.Config):
    recipe: str = Field("smoke", description="Preset: 'smoke' (CPU defaults), 'party-12b' (8-bit LoRA, ZeRO-2, "
                                             "2 GPUs), 'herrsimian-8b' (4-bit QLoRA, WSD, 12k context). Its "
                                             "values fill only the fields not set here.")
    allow_cpu: bool = Field(False, description="Run a GPU recipe on a machine without CUDA anyway (tiny models, "
                                               "tests); without it such a run fails at once.")
    format: Optional[str] = _f("format", "Prompt format the recipe expects from tokenized_parquet ('inst', "
                                         "'herrsimian', …); training fails if the data has another. '' = any.")
    # LoRA
    rank: Optional[int] = _f("rank", "LoRA r.")
    alpha: Optional[int] = _f("alpha", "LoRA alpha.")
    dropout: Optional[float] = _f("dropout", "LoRA dropout.")
    use_rslora: Optional[bool] = _f("use_rslora", "Rank-stabilised LoRA scaling (alpha/sqrt(r)).")
    target_modules: Optional[list[str]] = _f("target_modules", "Modules to adapt.")
    # Optimisation
    learning_rate: Optional[float] = _f("learning_rate", "Peak learning rate.")
    lr_scheduler: Optional[str] = _f("lr_scheduler", "Any transformers scheduler name (cosine, linear, constant, "
                                                     "warmup_stable_decay…).")
    warmup_steps: Optional[int] = _f("warmup_steps", "Linear warm-up steps.")
    wsd_stable_epochs: Optional[float] = _f("wsd_stable_epochs", "warmup_stable_decay: epochs at the peak rate "
                                                                 "(0: all that warm-up and decay leave).")
    wsd_decay_epochs: Optional[float] = _f("wsd_decay_epochs", "warmup_stable_decay: epochs of (cosine) decay; "
                                                               "0 = an immediate drop.")
    min_lr_ratio: Optional[float] = _f("min_lr_ratio", "warmup_stable_decay: rate after the decay, as a share of "
                                                       "the peak, kept until the end.")
    weight_decay: Optional[float] = _f("weight_decay", "AdamW weight decay.")
    optim: Optional[str] = _f("optim", "transformers optimizer name (adamw_torch, adamw_bnb_8bit, paged_adamw_8bit "
                                       "on a GPU…).")
    num_epochs: Optional[float] = _f("num_epochs", "Epochs over the train split (ignored when max_steps > 0).")
    max_steps: Optional[int] = _f("max_steps", "Optimizer steps; 0 = use num_epochs.")
    batch_size: Optional[int] = _f("batch_size", "Per-device micro-batch size (samples).")
    gradient_accumulation_steps: Optional[int] = _f("gradient_accumulation_steps", "Micro-batches per optimizer "
                                                    "step (ignored when global_batch_size > 0).")
    global_batch_size: Optional[int] = _f("global_batch_size", "Samples per optimizer step over all processes; "
                                          "sets the accumulation from batch_size x world size. 0 = not used.")
    max_length: Optional[int] = _f("max_length", "Refuse samples longer than this (tokenized_parquet windows "
                                                 "the data to fit).")
    packing: Optional[bool] = _f("packing", "Padding-free packing: a micro-batch's samples concatenated into one "
                                            "row, positions restarting per sample, no attention across samples. "
                                            "false = right-padded batches.")
    # Model loading and memory
    precision: Optional[str] = _f("precision", "'auto' (bf16 where the hardware has it), 'bf16', 'fp16', 'fp32'.")
    load_in_8bit: Optional[bool] = _f("load_in_8bit", "Load the base model in 8-bit (bitsandbytes LLM.int8).")
    load_in_4bit: Optional[bool] = _f("load_in_4bit", "Load the base model in 4-bit (bitsandbytes, QLoRA).")
    bnb_4bit_quant_type: Optional[str] = _f("bnb_4bit_quant_type", "4-bit data type: 'nf4' or 'fp4'.")
    bnb_4bit_use_double_quant: Optional[bool] = _f("bnb_4bit_use_double_quant", "4-bit: also quantize the "
                                                                                "quantization constants.")
    gradient_checkpointing: Optional[bool] = _f("gradient_checkpointing", "Recompute activations in the backward "
                                                "pass (about half the memory, 10-30 % slower).")
    attn_implementation: Optional[str] = _f("attn_implementation", "'auto' (flash_attention_2 on CUDA when "
                                            "installed, else sdpa_packed when packing, sdpa when padded), or a "
                                            "transformers name.")
    # Checkpoints and outputs
    save_steps: Optional[int] = _f("save_steps", "Write a resumable checkpoint every this many steps (and at the "
                                                 "end).")
    save_total_limit: Optional[int] = _f("save_total_limit", "Newest checkpoints kept in the run folder (0 = all).")
    merge: Optional[bool] = _f("merge", "Also write the base model with the adapter merged in (merged/); the base "
                                        "is reloaded unquantized in CPU memory for it.")
    logging_steps: Optional[int] = _f("logging_steps", "Log the train loss every this many steps.")
    eval_steps: Optional[int] = _f("eval_steps", "Log the eval loss every this many steps (and at step 0 = the "
                                                 "base model); 0 = only at the start and the end.")
    eval_rows_in_training: Optional[int] = _f("eval_rows_in_training", "Eval rows scored during training (0 = "
                                              "all); eval_report always scores the whole eval split.")
    seed: Optional[int] = _f("seed", "Training seed.")
    # Launch and scale
    launcher: Optional[str] = _f("launcher", "'python' (one process), 'torchrun' or 'deepspeed'.")
    nproc_per_node: Optional[int] = _f("nproc_per_node", "Processes per node (one per GPU) under torchrun / "
                                                         "deepspeed.")
    zero_stage: Optional[int] = _f("zero_stage", "DeepSpeed ZeRO stage: 0 = no DeepSpeed, 2, or 3.")
    offload_optimizer: Optional[bool] = _f("offload_optimizer", "DeepSpeed: keep optimizer states on the CPU.")
    nnodes: Optional[int] = _f("nnodes", "Nodes; start the same run on every node with its node_rank.")
    node_rank: Optional[int] = _f("node_rank", "This node's rank (multi-node).")
    master_addr: Optional[str] = _f("master_addr", "Address of node 0 (multi-node).")
    master_port: Optional[int] = _f("master_port", "Rendezvous port on node 0.")
    hostfile: Optional[str] = _f("hostfile", "DeepSpeed multi-node: MPI-style hostfile naming every node.")
    force: bool = Field(False, description="Retrain from scratch even when a finished adapter or checkpoints with "
                                           "this fingerprint exist.")

    def resolved(self) -> dict[str, Any]:
        """Every field as the run uses it: set here > the recipe's preset > the smoke default."""
        return resolve(self.model_dump(), self.model_fields_set)[0]

    def recipe_fields(self) -> dict[str, Any]:
        """The fields whose values came from the named recipe's preset."""
        return resolve(self.model_dump(), self.model_fields_set)[1]
