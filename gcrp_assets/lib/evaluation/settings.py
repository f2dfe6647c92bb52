"""The settings of the evaluation (`eval_report`), declared once: type, default and help text.

`gcrp_assets.orchestration.configs.EvalConfig` is generated from `EvalSettings`; the evaluation itself is
`gcrp_assets.lib.evaluation.run.evaluate`. Kept apart from it so that importing the settings imports
nothing else (every stage's config module imports them).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = field(default=1, metadata={"help": "Batch size of the teacher-forced loss pass."})
    precision: str = field(default="auto", metadata={"help": "'auto' (bf16 where the hardware has it), 'bf16' or "
                                                             "'fp32'; both arms always use the same."})
    max_prompt_tokens: int = field(default=1536, metadata={"help": "Longest held-out context a generation starts "
                                                                   "from."})
    max_generations: int = field(default=0, metadata={"help": "Held-out contexts to generate replies from (gold "
                                                              "model turns, round-robin over the held-out "
                                                              "samples); 0 = auto: 4 on a CPU, 64 when CUDA is "
                                                              "present."})
    samples_per_context: int = field(default=-1, metadata={"help": "Sampled continuations per context and arm (K), "
                                                                   "besides the greedy one; 0 = greedy only; "
                                                                   "negative = auto: 1 on a CPU, 2 with CUDA."})
    temperature: float = field(default=-1.0, metadata={"help": "Sampling temperature; negative = the model cards' "
                                                               "value for the format (inst/chatml 0.8, "
                                                               "herrsimian 1.0)."})
    min_p: float = field(default=-1.0, metadata={"help": "Min-p of sampling; negative = the model cards' value for "
                                                         "the format (inst/chatml 0.1, herrsimian 0.05)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampled generations (per context; the same for "
                                                   "both arms)."})
    generation_batch_size: int = field(default=0, metadata={"help": "Contexts per generation batch (each runs "
                                                                    "1 + K rows); 0 = auto: 4 on a CPU, 16 with "
                                                                    "CUDA."})
    max_new_tokens: int = field(default=0, metadata={"help": "New tokens per continuation (stop strings off); "
                                                             "0 = auto: 32 on a CPU, 512 when CUDA is present."})
    report_samples: int = field(default=8, metadata={"help": "Contexts shown side by side in the report, worst "
                                                             "first."})
    speaker_turns: int = field(default=0, metadata={"help": "Held-out model turns measured teacher-forced "
                                                            "(speaker selection, stop and impersonation "
                                                            "propensity, from the loss passes); 0 = every one."})
    min_events: int = field(default=20, metadata={"help": "A generation rate whose pooled pair table (both arms) "
                                                          "holds fewer events than this shows 'too few events' "
                                                          "instead of a McNemar p-value."})
    bootstrap_resamples: int = field(default=10_000, metadata={"help": "Resamples of the paired bootstrap over "
                                                                       "threads."})
