"""Run configuration of each stage (Launchpad, `--config-json`, or `-c run.yaml`)."""


from pydantic import Field

from gcrp_assets.lib.clean.cleaning import CleaningOptions
from gcrp_assets.lib.clean.content_policy import PolicyConfig
from gcrp_assets.lib.clean.dedup import DedupConfig
from gcrp_assets.lib.clean.filters import FilterRules
from gcrp_assets.lib.ingest.stage import RawSettings
from gcrp_assets.lib.prompts.samples import PromptOptions
from gcrp_assets.lib.prompts.sheet_rewrite import RewriteSettings
from gcrp_assets.lib.evaluation.settings import EvalSettings
from gcrp_assets.lib.formats.settings import TokenizeSettings
from gcrp_assets.orchestration.settings import config_class


# raw_threads, filtered_threads, augmented_prompts: generated from the plain settings dataclasses their code
# takes (each setting declared once, with its default and help text, next to the code that uses it); the
# assets build those objects back with `settings_from`. Settings only the asset itself uses (template files,
# whether and with which model to rewrite sheets) are declared here, as `extra`.

RawConfig = config_class("RawConfig", RawSettings, doc="raw_threads: how a dump is read (`lib.ingest.stage`).")

FilterConfig = config_class(
    "FilterConfig", FilterRules, CleaningOptions, DedupConfig, PolicyConfig,
    doc="filtered_threads: the thread filters (`lib.clean.filters.FilterRules`), cleaning and attribution "
        "(`lib.clean.cleaning.CleaningOptions`), duplicates within the dump (`lib.clean.dedup.DedupConfig`) and "
        "the content policy (`lib.clean.content_policy.PolicyConfig`).")

PromptConfig = config_class(
    "PromptConfig", PromptOptions, RewriteSettings,
    doc="augmented_prompts: who the user plays and how speakers are named (`lib.prompts.samples.PromptOptions`), "
        "the template files, and the optional LLM sheet rewrite (`lib.prompts.sheet_rewrite.RewriteSettings`).",
    extra={
        "sheet_template": (str, Field("", description="YAML file with the uniform sheet's fields; empty = 12B "
                                                      "card's.")),
        "system_prompt_template": (str, Field("", description="Jinja file for the system prompt; empty = 12B "
                                                              "card's.")),
        "sheet_rewrite": (bool, Field(False, description="Rewrite sheets the rules cannot parse with a local Hugging "
                                                         "Face causal LM (greedy, cached by sheet hash under the "
                                                         "artifact root; values whose words are not in the sheet "
                                                         "are dropped).")),
        "sheet_rewrite_model": (str, Field("", description="Local Hugging Face model directory for the sheet "
                                                           "rewrite; empty = the base_model asset's directory.")),
    })


TokenizeConfig = config_class(
    "TokenizeConfig", TokenizeSettings,
    doc="Run configuration of tokenized_parquet: the plain settings (lib/formats/settings.py) and the dumps.",
    extra={"dumps": (list[str], Field([], description="Dump partitions in the training set; empty = every "
                                                      "registered dump with materialized samples."))})


EvalConfig = config_class(
    "EvalConfig", EvalSettings,
    doc="Run configuration of eval_report: the plain settings (lib/evaluation/settings.py) and the blocking "
        "check's tolerance.",
    extra={"loss_tolerance": (float, Field(0.05, description="Blocking check: the adapter's model-turn loss may "
                                                             "exceed the base model's by at most this many "
                                                             "nats/token."))})
