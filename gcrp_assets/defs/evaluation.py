"""eval_report: base model vs base + adapter on the held-out threads (`lib.evaluation.run.evaluate`)."""

import json
from pathlib import Path

import dagster as dg

from gcrp_assets.defs.automation import follow_new_checkpoint
from gcrp_assets.lib.evaluation.report import headline_table as report_headline
from gcrp_assets.lib.evaluation.run import EvalInputs, EvaluationError, evaluate
from gcrp_assets.lib.evaluation.settings import EvalSettings
from gcrp_assets.orchestration.artifacts import build_or_reuse, code_version, latest_materialization, read_manifest, upstream
from gcrp_assets.orchestration.configs import EvalConfig
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.orchestration.settings import settings_from

EVAL_CODE = code_version(__name__)  # every project file this module imports (lib.code_closure)


HEADLINE_COLUMNS = ("metric", "base", "adapter", "Δ", "CI")


def headline_table(records: list[dict]) -> dg.TableMetadataValue:
    """The report's headline as one UI table (metric | base | adapter | Δ | CI), values as the report rounds
    them (4 significant digits), so base and adapter read side by side."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, "string") for name in HEADLINE_COLUMNS])
    return dg.MetadataValue.table(records=[dg.TableRecord({k: str(r[k]) for k in HEADLINE_COLUMNS}) for r in records],
                                  schema=schema)


def ui_metadata(folder: Path) -> dict:
    """What the UI shows first, for a fresh or a reused report alike (tables are not kept in the manifest): the
    headline table from report.json, and the HTML report and model card as clickable file:// links."""
    summary = json.loads((folder / "report.json").read_text("utf-8"))["summary"]
    return {"headline": headline_table(report_headline(summary)),
            "report_html_url": dg.MetadataValue.url((folder / "report.html").resolve().as_uri()),
            "model_card_url": dg.MetadataValue.url((folder / "model_card.md").resolve().as_uri())}


@dg.asset(group_name="evaluation", kinds={"pytorch"}, code_version=EVAL_CODE, pool="gpu",
          deps=["lora_checkpoint", "tokenized_parquet", "base_model"],
          automation_condition=follow_new_checkpoint(),
          check_specs=[dg.AssetCheckSpec("adapter_not_worse_than_base", asset="eval_report", blocking=True,
                                         description="Model-turn loss of the adapter ≤ base + loss_tolerance.")])
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """Base model vs base + adapter on the held-out threads, in one model load: model-turn loss, perplexity
    and bits per byte with a cluster-bootstrap CI over threads, and from the same forward passes the loss on
    user turns, speaker names and the end-of-turn marker and, at every held-out model turn, speaker selection
    (beside simple baselines), stop and impersonation propensity with paired CIs; greedy and seeded sampled
    generations (stops off, and on as shown) scored for impersonation, stops, template leaks, OOC, repetition
    and length, with events and n beside every rate. Markdown, self-contained HTML and JSON reports, the model
    card and SillyTavern presets, all in this asset's own folder (the adapter's folder is only read). The UI
    shows the headline as a table, the report with its plots as Markdown, and links to the HTML report and
    the card."""
    settings = settings_from(config, EvalSettings)
    adapter = upstream(context, "lora_checkpoint")
    data = upstream(context, "tokenized_parquet")
    base = upstream(context, "base_model")
    base_event = latest_materialization(context.instance, "base_model")
    base_name = str(base_event.metadata["model_name"].value) if "model_name" in base_event.metadata else base.path.name
    inputs = {"code": EVAL_CODE, "config": config.model_dump(), "lora_checkpoint": adapter.data_version,
              "tokenized_parquet": data.data_version, "base_model": base.data_version, "base_model_name": base_name}
    dumps = sorted((read_manifest(data.path) or {}).get("inputs", {}).get("augmented_prompts", {}))
    sample_files = tuple(upstream(context, "augmented_prompts", dump).path / "samples.parquet" for dump in dumps)
    sources = EvalInputs(base_model=base.path, adapter=adapter.path, tokenized=data.path, sample_files=sample_files,
                         base_model_name=base_name, base_model_version=base.data_version,
                         adapter_version=adapter.data_version, tokenized_version=data.data_version)

    def build(folder) -> dict:
        try:
            result = evaluate(settings, sources, folder, log=context.log.info)
        except EvaluationError as exc:
            raise dg.Failure(str(exc)) from exc
        return {"report": dg.MetadataValue.md(result.preview),
                **result.metrics,
                "report_path": dg.MetadataValue.path(str(result.report_md)),
                "report_html": dg.MetadataValue.path(str(result.report_html)),
                "model_card": dg.MetadataValue.path(str(result.model_card))}

    def checks(m: dict) -> list[dg.AssetCheckResult]:
        regression = m["model_turn_loss_adapter"] - m["model_turn_loss_base"]
        return [dg.AssetCheckResult(
            check_name="adapter_not_worse_than_base", passed=bool(regression <= config.loss_tolerance),
            metadata={"loss_delta": regression, "tolerance": config.loss_tolerance})]

    built = build_or_reuse(context, lambda fp: store.dir_for("eval_report", fp), inputs, build, checks=checks,
                           content_globs=("report.json",))
    context.log.info(f"eval report: {built.path / 'report.md'}")
    return built.result(**ui_metadata(built.path))
