"""The training set: tokenized_parquet, every dump's samples rendered and tokenized once
(`lib.formats.stage.run_tokenize`)."""


import dataclasses
from pathlib import Path

import dagster as dg

from gcrp_assets.defs.automation import follow_upstream_data
from gcrp_assets.defs.data_stages import augmented_prompts, cross_dump_dedup
from gcrp_assets.lib.formats.chat_format import get_format
from gcrp_assets.lib.formats.settings import TokenizeSettings
from gcrp_assets.lib.formats.stage import run_tokenize
from gcrp_assets.lib.hashing import sha256_file
from gcrp_assets.orchestration.artifacts import build_or_reuse, code_version, latest_materialization, upstream
from gcrp_assets.orchestration.configs import TokenizeConfig
from gcrp_assets.orchestration.partitions import dumps
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.orchestration.settings import settings_from

TOKENIZE_CODE = code_version(__name__)  # every project file this module imports (lib.code_closure)


def selected_dumps(instance: dg.DagsterInstance, requested: list[str]) -> list[str]:
    """The dump partitions that feed the training set: `requested`, or every registered one that has samples."""
    registered = sorted(instance.get_dynamic_partitions(dumps.name))
    if requested:
        unknown = sorted(set(requested) - set(registered))
        if unknown:
            raise dg.Failure(f"unknown dump partitions {unknown}; registered: {registered}")
        return sorted(requested)
    ready = [d for d in registered if latest_materialization(instance, "augmented_prompts", d) is not None]
    if not ready:
        raise dg.Failure("no dump partition has augmented_prompts yet: materialize the data stages first")
    return ready


@dg.asset(
    group_name="training", kinds={"parquet"}, code_version=TOKENIZE_CODE, deps=[augmented_prompts, "base_model"],
    automation_condition=follow_upstream_data(),
    check_specs=[
        dg.AssetCheckSpec("one_bos_per_sample", asset="tokenized_parquet", blocking=True,
                          description="Every row of a format that adds BOS starts with exactly one BOS token "
                                      "(none missing, none doubled)."),
        dg.AssetCheckSpec("labels_are_model_turns", asset="tokenized_parquet", blocking=True,
                          description="Decoding the trained tokens gives exactly the trained spans' text."),
        dg.AssetCheckSpec("within_max_length", asset="tokenized_parquet", blocking=True,
                          description="No row has more tokens than the run's max_length."),
        dg.AssetCheckSpec("no_trained_token_in_user_or_system_turn", asset="tokenized_parquet", blocking=True,
                          description="No token with a label lies (even partly) in a user or system turn, from "
                                      "the rendered turns' character spans and the tokenizer's offset mapping."),
    ],
)
def tokenized_parquet(context: dg.AssetExecutionContext, config: TokenizeConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """The training set: the samples of every dump partition (or of `config.dumps`), rendered in the chosen
    prompt format, tokenized once with the base model's tokenizer, labels masked to model turns (or all text
    for raw-text formats), split into train/eval by thread."""
    settings = settings_from(config, TokenizeSettings)
    partitions = selected_dumps(context.instance, config.dumps)
    samples_up = {dump: upstream(context, "augmented_prompts", dump) for dump in partitions}
    dedup = cross_dump_dedup(samples_up)  # the duplicate settings the dumps were filtered with
    model_up = upstream(context, "base_model")
    get_format(settings.format)  # an unknown format fails here, before any work
    format_file = Path(settings.format)
    inputs = {"code": TOKENIZE_CODE, "config": config.model_dump(),
              "format_spec": sha256_file(format_file) if format_file.suffix and format_file.is_file() else None,
              "augmented_prompts": {dump: up.data_version for dump, up in samples_up.items()},
              "base_model": model_up.data_version, "cross_dump_dedup": dataclasses.asdict(dedup)}

    def build(folder: Path) -> dict:
        result = run_tokenize(settings, model_up.path, [samples_up[d].path / "samples.parquet" for d in partitions],
                              folder, log=context.log.info, dedup=dedup)
        m, md = result.metrics, result.markdown
        return {"dagster/row_count": m["rows"], "dumps": dg.MetadataValue.json(partitions),
                **{k: v for k, v in m.items() if k != "rows"},
                **{k: dg.MetadataValue.md(v) for k, v in md.items()}}

    built = build_or_reuse(context, lambda fp: store.dir_for("tokenized_parquet", fp), inputs, build,
                           checks=tokenized_checks)
    return built.result()


def tokenized_checks(m: dict) -> list[dg.AssetCheckResult]:
    return [
        dg.AssetCheckResult(check_name="one_bos_per_sample", passed=m["bad_bos_rows"] == 0,
                            metadata={"bad_rows": m["bad_bos_rows"]}),
        dg.AssetCheckResult(check_name="labels_are_model_turns", passed=m["bad_label_rows"] == 0,
                            metadata={"bad_rows": m["bad_label_rows"]}),
        dg.AssetCheckResult(check_name="within_max_length", passed=m["over_length_rows"] == 0,
                            metadata={"rows_over": m["over_length_rows"], "max_tokens": m["max_tokens"]}),
        dg.AssetCheckResult(check_name="no_trained_token_in_user_or_system_turn",
                            passed=m["masked_turn_leak_rows"] == 0 and m["masked_turn_unchecked_rows"] == 0,
                            metadata={"bad_rows": m["masked_turn_leak_rows"],
                                      "bad_tokens": m["masked_turn_leak_tokens"],
                                      "rows_not_retokenizing_to_their_ids": m["masked_turn_unchecked_rows"],
                                      "label_policy": m["label_policy"], "result": m["masked_turn_check"]}),
    ]
