"""The training set: tokenized_parquet, every dump's samples rendered and tokenized once."""


import json
from collections import Counter
from pathlib import Path

import dagster as dg

from gcrp_assets.orchestration.artifacts import build_or_reuse, code_version, latest_materialization, upstream
from gcrp_assets.defs.automation import follow_upstream_data
from gcrp_assets.orchestration.configs import TokenizeConfig
from gcrp_assets.defs.data_stages import augmented_prompts
from gcrp_assets.orchestration.partitions import dumps
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.lib import schemas
from gcrp_assets.lib.clean.dedup import DedupConfig, drop_cross_dump_duplicates
from gcrp_assets.lib.formats.chat_format import get_format, render, resolve_label_policy
from gcrp_assets.lib.hashing import sha256_file
from gcrp_assets.lib.parquet import read_rows, write_table
from gcrp_assets.lib.plots import length_histogram_png, markdown_image
from gcrp_assets.lib.formats.split import assign_splits
from gcrp_assets.lib.tables import md_table
from gcrp_assets.lib.formats.tokenization import (IGNORE, check_no_trained_tokens_in_masked_turns,
                                                  tokenize_samples)

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
    group_name="data", kinds={"parquet"}, code_version=TOKENIZE_CODE, deps=[augmented_prompts, "base_model"],
    automation_condition=follow_upstream_data(),
    check_specs=[
        dg.AssetCheckSpec("one_bos_per_sample", asset="tokenized_parquet", blocking=True),
        dg.AssetCheckSpec("labels_are_model_turns", asset="tokenized_parquet", blocking=True,
                          description="Decoding the trained tokens gives exactly the trained spans' text."),
        dg.AssetCheckSpec("within_max_length", asset="tokenized_parquet", blocking=True),
        dg.AssetCheckSpec("no_trained_token_in_user_or_system_turn", asset="tokenized_parquet", blocking=True,
                          description="No token with a label lies (even partly) in a user or system turn, from "
                                      "the rendered turns' character spans and the tokenizer's offset mapping."),
    ],
)
def tokenized_parquet(context: dg.AssetExecutionContext, config: TokenizeConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """The training set: the samples of every dump partition (or of `config.dumps`), rendered in the chosen
    prompt format, tokenized once with the base model's tokenizer, labels masked to model turns (or all text
    for raw-text formats), split into train/eval by thread."""
    partitions = selected_dumps(context.instance, config.dumps)
    samples_up = {dump: upstream(context, "augmented_prompts", dump) for dump in partitions}
    model_up = upstream(context, "base_model")
    fmt = get_format(config.format)
    format_file = Path(config.format)
    inputs = {"code": TOKENIZE_CODE, "config": config.model_dump(),
              "format_spec": sha256_file(format_file) if format_file.suffix and format_file.is_file() else None,
              "augmented_prompts": {dump: up.data_version for dump, up in samples_up.items()},
              "base_model": model_up.data_version}

    def build(folder: Path) -> dict:
        from transformers import AutoTokenizer  # imported here: a reused artifact needs no tokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_up.path)
        samples = [s for dump in partitions for s in read_rows(samples_up[dump].path / "samples.parquet")]
        # The same thread in two dumps (a re-export, a cross-post) trains once: the earliest dump keeps it.
        samples, duplicates = drop_cross_dump_duplicates(samples, DedupConfig())
        for duplicate in duplicates:
            context.log.info(f"cross-dump duplicate dropped: {duplicate.detail}")
        splits = assign_splits([s["thread_key"] for s in samples], config.eval_fraction,
                               config.min_eval_threads, config.split_seed)
        rows, dropped = [], []
        bad_bos = bad_labels = too_long = 0
        policy = resolve_label_policy(fmt, config.label_policy or None)
        masked_check = policy != "all"  # `all` trains user and system turns by design
        leak_rows = leak_tokens = unchecked_rows = 0
        to_check: list = []

        def check_masked_turns():
            nonlocal leak_rows, leak_tokens, unchecked_rows
            found = check_no_trained_tokens_in_masked_turns(tokenizer, to_check)
            leak_rows, leak_tokens, unchecked_rows = (leak_rows + found[0], leak_tokens + found[1],
                                                      unchecked_rows + found[2])
            to_check.clear()

        tokenized = tokenize_samples(samples, fmt, tokenizer, config.max_length,
                                     label_policy=config.label_policy or None, overlap_turns=config.overlap_turns)
        for sample, (windows, lost) in zip(samples, tokenized):
            dropped += [{"sample_id": d.sample_id, "turn": d.turn, "reason": d.reason, "detail": d.detail} for d in lost]
            for index, window in enumerate(windows):
                ids, labels = window.input_ids, window.labels
                if fmt.add_bos and (ids[0] != tokenizer.bos_token_id or ids[1:2] == [tokenizer.bos_token_id]):
                    bad_bos += 1
                trained = [t for t, l in zip(ids, labels) if l != IGNORE]
                rendered = render(sample, fmt, tokenizer.bos_token, (window.first_turn, window.last_turn),
                                  eos_token=tokenizer.eos_token, label_policy=config.label_policy or None,
                                  train_from=window.train_from)
                if tokenizer.decode(trained) != rendered.trained_text():
                    bad_labels += 1
                if masked_check:
                    to_check.append((rendered, ids, labels))
                    if len(to_check) >= 256:
                        check_masked_turns()
                too_long += len(ids) > config.max_length
                rows.append({"sample_id": sample["sample_id"], "window": index, "thread_key": sample["thread_key"],
                             "split": splits[sample["thread_key"]], "format": fmt.name,
                             "first_turn": window.first_turn, "last_turn": window.last_turn,
                             "n_tokens": len(ids), "n_trained": window.n_trained, "text": window.text,
                             "input_ids": ids, "labels": labels})
        if to_check:
            check_masked_turns()
        write_table(rows, schemas.TOKENIZED, folder / "tokenized.parquet")
        # The held-out samples with their turns, for generations in eval_report.
        write_table([s for s in samples if splits[s["thread_key"]] == "eval"], schemas.SAMPLES,
                    folder / "eval_samples.parquet")
        (folder / "dropped.json").write_text(json.dumps(dropped, indent=1, sort_keys=True))
        per_split = Counter(r["split"] for r in rows)
        tokens = Counter()
        for r in rows:
            tokens[r["split"]] += r["n_tokens"]
            tokens[r["split"] + "_trained"] += r["n_trained"]
        threads = Counter(splits.values())
        return {
            "dagster/row_count": len(rows),
            "dumps": dg.MetadataValue.json(partitions),
            "format": fmt.name,
            "train_rows": per_split["train"],
            "eval_rows": per_split["eval"],
            "train_threads": threads["train"],
            "eval_threads": threads["eval"],
            "train_tokens": tokens["train"],
            "train_trained_tokens": tokens["train_trained"],
            "eval_tokens": tokens["eval"],
            "eval_trained_tokens": tokens["eval_trained"],
            "max_tokens": max((r["n_tokens"] for r in rows), default=0),
            "windows_over_samples": round(len(rows) / max(len(samples), 1), 3),
            "dropped_turns": len(dropped),
            "dropped_reasons": dg.MetadataValue.md(md_table(sorted(Counter(d["reason"] for d in dropped).items()),
                                                            ["reason", "turns"])),
            "cross_dump_duplicates": len(duplicates),
            "token_length_histogram": dg.MetadataValue.md(markdown_image(
                length_histogram_png([r["n_tokens"] for r in rows], config.max_length), "tokens per row")),
            "bad_bos_rows": bad_bos,
            "bad_label_rows": bad_labels,
            "over_length_rows": too_long,
            "label_policy": policy,
            "masked_turn_check": ("checked" if masked_check else
                                  "vacuous: label policy 'all' trains every token, user and system turns included"),
            "masked_turn_leak_rows": leak_rows,
            "masked_turn_leak_tokens": leak_tokens,
            "masked_turn_unchecked_rows": unchecked_rows,
            "preview": dg.MetadataValue.md("```text\n" + (rows[0]["text"][:1500] if rows else "") + "\n```"),
        }

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
