"""Run configuration of each stage (Launchpad, `--config-json`, or `-c run.yaml`)."""


import dagster as dg
from pydantic import Field

from gcrp_assets.defs.training_config import LoraConfig  # noqa: F401  (re-exported: one place to import configs)


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
