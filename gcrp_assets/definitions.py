"""The code location: every asset, check, job, sensor, schedule and resource of gcrp_assets.

`defs` loads the `defs/` folder (`dg.load_from_defs_folder`): the assets from their stage modules, the jobs,
sensors and schedules from `defs/automation.py`, the resources from `defs/resources.py`. On top of that it
sets what holds for the whole location: the in-process executor, owners, `stage`/`domain` tags, source-code
references and the Parquet assets' column schemas (from `gcrp_assets.lib.schemas`).

Environment (the resources read it through `dg.EnvVar` when a run starts; unset or empty means the default):
  GCRP_INBOX       folder of dumps (default: the sample corpus shipped in the package)
  GCRP_ARTIFACTS   artifact root (default: ./artifacts)
  GCRP_BASE_MODEL  local Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct)
  GCRP_BASE_MODEL_NAME  the base model's name in model cards, e.g. a Hub id (default: the embedded model's
                   Hub id, or the directory's name)
"""

import os
import warnings
from pathlib import Path

import dagster as dg
import pyarrow as pa

from gcrp_assets.lib import schemas
from gcrp_assets.orchestration.k8s import location_executor

# Offline by design: weights and tokenizers come from local files, never from a hub.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OWNERS = ["team:gcrp"]

# Tags of each asset: its pipeline stage, and the domain it belongs to (what the catalog filters on).
ASSET_TAGS = {
    "raw_threads": {"stage": "ingest", "domain": "data"},
    "filtered_threads": {"stage": "clean", "domain": "data"},
    "augmented_prompts": {"stage": "augment", "domain": "data"},
    "tokenized_parquet": {"stage": "tokenize", "domain": "data"},
    "base_model": {"stage": "base-model", "domain": "model"},
    "lora_checkpoint": {"stage": "train", "domain": "model"},
    "eval_report": {"stage": "evaluate", "domain": "evaluation"},
    "sillytavern_chats": {"stage": "export", "domain": "data"},
}

# The table each Parquet asset writes (its main file), shown as the asset's columns.
COLUMN_SCHEMAS = {
    "raw_threads": schemas.RAW_THREADS,
    "filtered_threads": schemas.FILTERED_THREADS,
    "augmented_prompts": schemas.SAMPLES,
    "tokenized_parquet": schemas.TOKENIZED,
}


def table_schema(schema: pa.Schema) -> dg.TableSchema:
    """The Dagster table schema of an Arrow schema: one column per field, its Arrow type as the type."""
    return dg.TableSchema(columns=[
        dg.TableColumn(name=field.name, type=str(field.type),
                       constraints=dg.TableColumnConstraints(nullable=field.nullable))
        for field in schema])


def annotate(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Owners, tags and (for a Parquet asset) the column schema; what the asset declares itself wins."""
    key = spec.key.to_user_string()
    tags = {**ASSET_TAGS.get(key, {"stage": key, "domain": spec.group_name or "default"}), **spec.tags}
    metadata = dict(spec.metadata)
    if key in COLUMN_SCHEMAS:
        metadata.setdefault("dagster/column_schema", table_schema(COLUMN_SCHEMAS[key]))
    return spec.replace_attributes(owners=[*spec.owners, *(o for o in OWNERS if o not in spec.owners)],
                                   tags=tags, metadata=metadata)


def _unique(items) -> list:
    """Each definition once: a module of `defs/` that imports another's asset (for `deps=`) lists it too."""
    seen, out = set(), []
    for item in items or []:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


def build_defs(resources: dict | None = None) -> dg.Definitions:
    """The code location's definitions; `resources` replaces those of `defs/resources.py` (tests)."""
    loaded = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    with warnings.catch_warnings():  # source-code references and spec mapping are beta/preview APIs
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        assets = dg.with_source_code_references(_unique(loaded.assets))
        return dg.Definitions(
            assets=assets,
            asset_checks=_unique(loaded.asset_checks),
            jobs=_unique(loaded.jobs),
            sensors=_unique(loaded.sensors),
            schedules=_unique(loaded.schedules),
            resources=loaded.resources if resources is None else resources,
            loggers=loaded.loggers,
            metadata=loaded.metadata,
            component_tree=loaded.component_tree,
            # GCRP_EXECUTOR: in_process (default: one process, without re-importing torch/peft for every step)
            # or k8s (each step in its own pod; see gcrp_assets.orchestration.k8s.location_executor).
            executor=location_executor(),
        ).map_resolved_asset_specs(func=annotate)


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs()
