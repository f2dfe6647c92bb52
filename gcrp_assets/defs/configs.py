"""Run configuration of each stage (Launchpad, `--config-json`, or `-c run.yaml`)."""


import dagster as dg
from pydantic import Field


class FilterConfig(dg.Config):
    min_turns: int = Field(6, description="Keep threads with at least this many roleplay turns.")
    min_characters: int = Field(2, description="Keep threads with at least this many speaking characters.")
    max_characters: int = Field(7, description="Keep threads with at most this many speaking characters.")
    drop_unattributed: bool = Field(True, description="Drop posts no rule attributes to a character "
                                                      "(always counted in n_unattributed_posts).")


class PromptConfig(dg.Config):
    user_character: str = Field("starter", description="Which character the human user plays: 'starter' "
                                                       "(the thread's first speaker).")
    sheet_template: str = Field("", description="YAML file with the uniform sheet's fields; empty = 12B card's.")
    system_prompt_template: str = Field("", description="Jinja file for the system prompt; empty = 12B card's.")


class TokenizeConfig(dg.Config):
    dumps: list[str] = Field([], description="Dump partitions in the training set; empty = every registered dump "
                                             "with materialized samples.")
    format: str = Field("inst", description="Prompt format: 'inst' (12B [INST]role), 'chatml', 'herrsimian' (::::).")
    max_length: int = Field(2048, description="Maximum tokens per sample; longer threads become windows.")
    eval_fraction: float = Field(0.15, description="Share of threads held out for evaluation.")
    min_eval_threads: int = Field(4, description="Hold out at least this many threads.")
    split_seed: int = Field(0, description="Seed of the thread-level train/eval split.")


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


class EvalConfig(dg.Config):
    batch_size: int = Field(1, description="Batch size of the teacher-forced loss pass.")
    precision: str = Field("auto", description="'auto' (bf16 where the hardware has it), 'bf16' or 'fp32'; "
                                               "both arms always use the same.")
    max_prompt_tokens: int = Field(1536, description="Longest held-out context a generation starts from.")
    max_generations: int = Field(4, description="Held-out contexts to generate replies for.")
    max_new_tokens: int = Field(48, description="Greedy tokens per generated reply.")
    speaker_turns: int = Field(6, description="Gold model turns scored for speaker selection (spread over threads).")
    loss_tolerance: float = Field(0.05, description="Blocking check: the adapter's model-turn loss may exceed "
                                                    "the base model's by at most this many nats/token.")
    bootstrap_resamples: int = Field(10_000, description="Resamples of the paired bootstrap over threads.")
