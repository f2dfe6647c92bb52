"""The settings of the tokenize stage (`tokenized_parquet`), declared once: type, default and help text.

`gcrp_assets.orchestration.configs.TokenizeConfig` is generated from `TokenizeSettings`; the stage itself is
`gcrp_assets.lib.formats.stage.run_tokenize`. Kept apart from the stage so that importing the settings
imports nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenizeSettings:
    format: str = field(default="inst", metadata={"help": "Prompt format: 'inst' (12B [INST]role), 'chatml', "
                                                          "'herrsimian' (::::), a shipped example spec name, or a "
                                                          ".yaml/.jinja format file."})
    label_policy: str = field(default="", metadata={"help": "'model_turns', 'all' or 'last_model_turn'; empty = "
                                                            "the format's."})
    overlap_turns: int = field(default=0, metadata={"help": "Windows after the first start this many turns "
                                                            "earlier (context only, not trained again)."})
    max_length: int = field(default=2048, metadata={"help": "Maximum tokens per sample; longer threads become "
                                                            "windows."})
    eval_fraction: float = field(default=0.15, metadata={"help": "Share of threads held out for evaluation."})
    min_eval_threads: int = field(default=4, metadata={"help": "Hold out at least this many threads."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the thread-level train/eval split."})
