"""eval_report: base model vs base + adapter on the held-out threads (`lib.evaluation.run.evaluate`)."""

import dagster as dg

from gcrp_assets.defs.automation import follow_new_checkpoint
from gcrp_assets.lib.evaluation.run import EvalInputs, EvaluationError, evaluate
from gcrp_assets.lib.evaluation.settings import EvalSettings
from gcrp_assets.orchestration.artifacts import build_or_reuse, code_version, latest_materialization, read_manifest, upstream
from gcrp_assets.orchestration.configs import EvalConfig
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.orchestration.settings import settings_from

EVAL_CODE = code_version(__name__)  # every project file this module imports (lib.code_closure)


@dg.asset(group_name="evaluation", kinds={"pytorch"}, code_version=EVAL_CODE,
          deps=["lora_checkpoint", "tokenized_parquet", "base_model"],
          automation_condition=follow_new_checkpoint(),
          check_specs=[dg.AssetCheckSpec("adapter_not_worse_than_base", asset="eval_report", blocking=True,
                                         description="Model-turn loss of the adapter ≤ base + loss_tolerance.")])
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """Base model vs base + adapter on the held-out threads, in one model load: model-turn loss, perplexity
    and bits per byte with a paired bootstrap CI over threads, and from the same forward pass the loss on user
    turns, speaker names and the end-of-turn marker; speaker selection beside simple baselines; greedy and
    seeded sampled generations (stops off, and on as shown) scored for impersonation, stops, template leaks,
    OOC, repetition and length, McNemar-tested. Markdown, self-contained HTML and JSON reports; model card."""
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
        return {**result.metrics,
                "report_path": dg.MetadataValue.path(str(result.report_md)),
                "report_html": dg.MetadataValue.path(str(result.report_html)),
                "model_card": dg.MetadataValue.path(str(result.model_card)),
                "report": dg.MetadataValue.md(result.preview)}

    def checks(m: dict) -> list[dg.AssetCheckResult]:
        regression = m["model_turn_loss_adapter"] - m["model_turn_loss_base"]
        return [dg.AssetCheckResult(
            check_name="adapter_not_worse_than_base", passed=bool(regression <= config.loss_tolerance),
            metadata={"loss_delta": regression, "tolerance": config.loss_tolerance})]

    built = build_or_reuse(context, lambda fp: store.dir_for("eval_report", fp), inputs, build, checks=checks,
                           content_globs=("report.json",))
    context.log.info(f"eval report: {built.path / 'report.md'}")
    return built.result()
