"""The code location: every asset, check, job, sensor, schedule and resource of gcrp_assets.

Environment (read when the code location loads):
  GCRP_INBOX       folder of dumps (default: the sample corpus shipped in the package)
  GCRP_ARTIFACTS   artifact root (default: ./artifacts)
  GCRP_BASE_MODEL  local Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct)
  GCRP_BASE_MODEL_NAME  the base model's name in model cards, e.g. a Hub id (default: the embedded model's
                   Hub id, or the directory's name)
"""

import os
from pathlib import Path

import dagster as dg

from gcrp_assets.defs.automation import (data_automation, dump_stages_job, inbox_sensor, training_chain_job,
                                         weekly_data_refresh)
from gcrp_assets.defs.data_stages import augmented_prompts, filtered_threads, raw_threads
from gcrp_assets.defs.tokenized import tokenized_parquet
from gcrp_assets.defs.evaluation import eval_report
from gcrp_assets.orchestration.resources import ArtifactStore, BaseModelSource, DumpInbox, packaged_inbox
from gcrp_assets.defs.training import base_model, lora_checkpoint

# Offline by design: weights and tokenizers come from local files, never from a hub.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALL_ASSETS = [raw_threads, filtered_threads, augmented_prompts, tokenized_parquet, base_model, lora_checkpoint,
              eval_report]


def default_resources() -> dict:
    return {
        "inbox": DumpInbox(path=os.environ.get("GCRP_INBOX") or str(packaged_inbox())),
        "store": ArtifactStore(root=str(Path(os.environ.get("GCRP_ARTIFACTS", "artifacts")).resolve())),
        "base": BaseModelSource(hf_model_dir=os.environ.get("GCRP_BASE_MODEL", ""),
                                model_name=os.environ.get("GCRP_BASE_MODEL_NAME", "")),
        "pipes": dg.PipesSubprocessClient(),
    }


def build_defs(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[dump_stages_job, training_chain_job],
        sensors=[inbox_sensor, data_automation],
        schedules=[weekly_data_refresh],
        resources=resources or default_resources(),
        # Stages run one after another; one process avoids re-importing torch/peft for every step.
        executor=dg.in_process_executor,
    )


defs = build_defs()
