"""Run configuration of each stage (Launchpad, `--config-json`, or `-c run.yaml`)."""


import dagster as dg
from pydantic import Field

from gcrp_assets.orchestration.training_config import LoraConfig  # noqa: F401  (re-exported: one place to import configs)
from gcrp_assets.lib.ingest.lines import MAX_RECORD_BYTES


class RawConfig(dg.Config):
    max_record_bytes: int = Field(MAX_RECORD_BYTES, description="Largest record read (a JSONL line, a chat message "
                                                          "line, a table row or thread, a card): a longer one is "
                                                          "rejected record_too_large without being held in memory.")


class FilterConfig(dg.Config):
    min_turns: int = Field(6, description="Keep threads with at least this many roleplay turns.")
    min_characters: int = Field(2, description="Keep threads with at least this many speaking characters.")
    max_characters: int = Field(7, description="Keep threads with at most this many speaking characters.")
    drop_unattributed: bool = Field(True, description="Drop posts no rule attributes to a character "
                                                      "(always counted in n_unattributed_posts).")
    ooc_policy: str = Field("strip", description="Out-of-character remarks: 'strip' (remove them, keep the post), "
                                                 "'keep' (as a name-less '(OOC: ...)' turn after the post, rendered "
                                                 "as a user turn without a name), or 'drop_post' (drop any post "
                                                 "with OOC).")
    max_ooc_share: float = Field(0.5, description="Reject a thread (too_much_ooc) when more than this share of its "
                                                  "posts hold OOC remarks; 1.0 = never.")
    narrator_policy: str = Field("skip", description="Narrator/system messages of the source program (SillyTavern "
                                                     "/sys, extra.type narrator): 'skip' them (counted) or keep "
                                                     "them as a name-less OOC turn ('ooc', rendered as a user turn).")
    attribution: str = Field("contract", description="'contract': the input contract's rules (character field, the "
                                                     "author's only character, a name header). 'author': the author "
                                                     "column is the speaking character (play scripts, transcripts, "
                                                     "chat logs); authors are then names, not handles.")
    content_policy: bool = Field(True, description="Reject threads where sexual content co-occurs with signs that a "
                                                   "participant is a minor (minor_sexual_content); evidence is kept "
                                                   "in rejects.parquet only.")
    content_policy_rules: str = Field("", description="Extra YAML rule file merged with the shipped "
                                                      "templates/content_policy.yaml.")
    min_post_chars: int = Field(10, description="A post with fewer characters left after cleaning is near-empty: "
                                                "counted in n_empty_posts, not a turn.")
    max_post_chars: int = Field(20_000, description="Reject a thread (post_too_long) with a roleplay post longer "
                                                    "than this many characters (rejected, not split); 0 = no limit.")
    max_unattributed_share: float = Field(0.3, description="Reject a thread (too_many_unattributed) when more than "
                                                           "this share of its posts is attributable to no "
                                                           "character; 1.0 = never.")
    language: str = Field("", description="'' = no language filter; 'en' = reject threads (not_english) whose "
                                          "English stop-word ratio is below min_language_score.")
    min_language_score: float = Field(0.2, description="Minimum stop-word ratio for the language filter.")
    dedup_exact: bool = Field(True, description="Reject exact duplicates (same normalized text) within the dump "
                                                "(exact_duplicate); the earliest thread_id is kept.")
    dedup_near: bool = Field(True, description="Reject near duplicates within the dump (near_duplicate): MinHash/LSH "
                                               "over word shingles; the earliest thread_id is kept.")
    near_duplicate_threshold: float = Field(0.8, description="MinHash-estimated Jaccard similarity of word "
                                                             "shingles at or above which a thread is a near "
                                                             "duplicate.")
    shingle_words: int = Field(5, description="Words per shingle for near-duplicate detection.")
    minhash_permutations: int = Field(128, description="MinHash permutations for near-duplicate detection.")


class PromptConfig(dg.Config):
    user_character: str = Field("starter", description="Which character the human user plays: 'starter' "
                                                       "(the thread's first speaker), 'each' (every character in "
                                                       "turn, one sample each, up to max_variants), or 'random' "
                                                       "(one, drawn with seed and the thread key).")
    max_variants: int = Field(3, description="'each': at most this many samples per thread (0 = every character).")
    seed: int = Field(0, description="'random': seed of the draw (combined with the thread key).")
    names: str = Field("real", description="Speaker names on turns: 'real' (character names) or 'placeholder' "
                                           "('{user}', '{char1}', ... with the roster 'Name # {char1}' in the "
                                           "system prompt; the mapping is the name_map column).")
    sheet_template: str = Field("", description="YAML file with the uniform sheet's fields; empty = 12B card's.")
    system_prompt_template: str = Field("", description="Jinja file for the system prompt; empty = 12B card's.")
    sheet_rewrite: bool = Field(False, description="Rewrite sheets the rules cannot parse with a local Hugging Face "
                                                   "causal LM (greedy, cached by sheet hash under the artifact "
                                                   "root; values whose words are not in the sheet are dropped).")
    sheet_rewrite_model: str = Field("", description="Local Hugging Face model directory for the sheet rewrite; "
                                                     "empty = the base_model asset's directory.")
    sheet_rewrite_min_fields: int = Field(2, description="The rules 'cannot parse' a sheet with words in which they "
                                                         "recognise fewer template fields than this (name and Other "
                                                         "Information not counted).")
    sheet_rewrite_min_support: float = Field(0.75, description="Keep a rewritten field value only when at least "
                                                               "this share of its words occurs in the source sheet.")
    sheet_rewrite_max_new_tokens: int = Field(384, description="Greedy decoding budget per rewritten sheet.")


class TokenizeConfig(dg.Config):
    dumps: list[str] = Field([], description="Dump partitions in the training set; empty = every registered dump "
                                             "with materialized samples.")
    format: str = Field("inst", description="Prompt format: 'inst' (12B [INST]role), 'chatml', 'herrsimian' (::::), "
                                            "a shipped example spec name, or a .yaml/.jinja format file.")
    label_policy: str = Field("", description="'model_turns', 'all' or 'last_model_turn'; empty = the format's.")
    overlap_turns: int = Field(0, description="Windows after the first start this many turns earlier (context "
                                              "only, not trained again).")
    max_length: int = Field(2048, description="Maximum tokens per sample; longer threads become windows.")
    eval_fraction: float = Field(0.15, description="Share of threads held out for evaluation.")
    min_eval_threads: int = Field(4, description="Hold out at least this many threads.")
    split_seed: int = Field(0, description="Seed of the thread-level train/eval split.")


class EvalConfig(dg.Config):
    batch_size: int = Field(1, description="Batch size of the teacher-forced loss pass.")
    precision: str = Field("auto", description="'auto' (bf16 where the hardware has it), 'bf16' or 'fp32'; "
                                               "both arms always use the same.")
    max_prompt_tokens: int = Field(1536, description="Longest held-out context a generation starts from.")
    max_generations: int = Field(0, description="Held-out contexts to generate replies from (gold model turns, "
                                                "round-robin over the held-out samples); 0 = auto: 8 on a CPU, "
                                                "64 when CUDA is present.")
    samples_per_context: int = Field(2, description="Sampled continuations per context and arm (K), besides the "
                                                    "greedy one; 0 = greedy only.")
    temperature: float = Field(-1.0, description="Sampling temperature; negative = the model cards' value for "
                                                 "the format (inst/chatml 0.8, herrsimian 1.0).")
    min_p: float = Field(-1.0, description="Min-p of sampling; negative = the model cards' value for the format "
                                           "(inst/chatml 0.1, herrsimian 0.05).")
    seed: int = Field(0, description="Seed of the sampled generations (per context; the same for both arms).")
    generation_batch_size: int = Field(0, description="Contexts per generation batch (each runs 1 + K rows); "
                                                      "0 = auto: 4 on a CPU, 16 with CUDA.")
    max_new_tokens: int = Field(0, description="New tokens per continuation (stop strings off); 0 = auto: 40 on "
                                               "a CPU, 512 when CUDA is present.")
    report_samples: int = Field(8, description="Contexts shown side by side in the report, worst first.")
    speaker_turns: int = Field(4, description="Gold model turns scored for speaker selection (spread over threads).")
    loss_tolerance: float = Field(0.05, description="Blocking check: the adapter's model-turn loss may exceed "
                                                    "the base model's by at most this many nats/token.")
    bootstrap_resamples: int = Field(10_000, description="Resamples of the paired bootstrap over threads.")
