"""Run configuration of lora_checkpoint (Launchpad, `--config-json`, or `-c run.yaml`)."""

import dagster as dg
from pydantic import Field


class LoraConfig(dg.Config):
    rank: int = Field(16, description="LoRA r.")
    alpha: int = Field(32, description="LoRA alpha.")
    dropout: float = Field(0.05, description="LoRA dropout.")
    target_modules: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj"], description="Modules to adapt.")
    learning_rate: float = Field(1e-3, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="Any transformers scheduler name (cosine, linear, constant…).")
    warmup_steps: int = Field(2, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, description="AdamW weight decay.")
    num_epochs: float = Field(1.0, description="Epochs over the train split (ignored when max_steps > 0).")
    max_steps: int = Field(20, description="Optimizer steps; 0 = use num_epochs.")
    batch_size: int = Field(1, description="Per-device micro-batch size.")
    gradient_accumulation_steps: int = Field(1, description="Micro-batches per optimizer step.")
    max_length: int = Field(2048, description="Refuse samples longer than this (tokenized_parquet splits to fit).")
    logging_steps: int = Field(5, description="Log the train loss every this many steps.")
    eval_steps: int = Field(10, description="Log the eval loss every this many steps (and at step 0 = the base "
                                            "model); 0 = only at the start and the end.")
    eval_rows_in_training: int = Field(4, description="Eval rows scored during training (0 = all); eval_report "
                                                      "always scores the whole eval split.")
    seed: int = Field(0, description="Training seed.")
    precision: str = Field("auto", description="'auto' (bf16 where the hardware has it), 'bf16', 'fp16', 'fp32'.")
    launcher: str = Field("python", description="'python' (one process) or 'torchrun'.")
    nproc_per_node: int = Field(1, description="Processes per node under torchrun.")
    force: bool = Field(False, description="Retrain even when a finished adapter with this fingerprint exists.")
