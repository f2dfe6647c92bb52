"""eval_report: base model vs base + adapter on the held-out threads."""

import json
import math
from pathlib import Path

import dagster as dg

from gcrp_assets.defs.artifacts import build_or_reuse, code_version, read_manifest, upstream
from gcrp_assets.defs.automation import follow_new_checkpoint
from gcrp_assets.defs.configs import EvalConfig
from gcrp_assets.defs.resources import ArtifactStore
from gcrp_assets.lib import eval_metrics as em
from gcrp_assets.lib import evaluation as ev
from gcrp_assets.lib import speaker_selection as ss
from gcrp_assets.lib.formats import get_format
from gcrp_assets.lib.model_card import dataset_statistics, model_card
from gcrp_assets.lib.sillytavern import context_preset, instruct_preset
from gcrp_assets.lib.parquet import read_rows
from gcrp_assets.lib.plots import paired_scatter_png
from gcrp_assets.lib.precision import autocast, resolve_precision
from gcrp_assets.lib.report import html_report, markdown_report
from gcrp_assets.lib.tokenization import IGNORE
from gcrp_assets.lib.training_data import load_split

EVAL_CODE = code_version("lib/evaluation.py", "lib/eval_metrics.py", "lib/speaker_selection.py", "lib/report.py",
                         "lib/formats.py", "lib/training_data.py", "lib/precision.py", "lib/plots.py",
                         "lib/model_card.py", "lib/sillytavern.py",
                         "defs/evaluation.py")


def _loss_section(model, tokenizer, rows: list[dict], config: EvalConfig, precision: str) -> dict:
    """Teacher-forced model-turn loss per arm, per thread (paired bootstrap CI) and in bits per byte."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with autocast(precision):
        adapter_nll = ev.per_row_nll(model, rows, pad_id, config.batch_size)
        with model.disable_adapter():
            base_nll = ev.per_row_nll(model, rows, pad_id, config.batch_size)
    base, adapter = ev.totals(base_nll), ev.totals(adapter_nll)
    n_bytes = sum(em.utf8_bytes(tokenizer.decode([t for t, l in zip(r["input_ids"], r["labels"]) if l != IGNORE]))
                  for r in rows)
    per_thread = {arm: em.thread_level_losses({"thread_key": r["thread_key"], "nll": n, "tokens": t}
                                              for r, (n, t) in zip(rows, pairs))
                  for arm, pairs in (("base", base_nll), ("adapter", adapter_nll))}
    keys, deltas = em.paired_thread_deltas(per_thread["base"], per_thread["adapter"])
    mean, low, high = em.paired_bootstrap(deltas, config.bootstrap_resamples, seed=0)
    return {
        "model_turn_loss_base": base.loss, "model_turn_loss_adapter": adapter.loss,
        "perplexity_base": base.perplexity, "perplexity_adapter": adapter.perplexity,
        "bits_per_byte_base": em.bits_per_byte(base.nll, n_bytes),
        "bits_per_byte_adapter": em.bits_per_byte(adapter.nll, n_bytes),
        "eval_trained_tokens": adapter.tokens,
        "loss_delta_mean_per_thread": mean, "loss_delta_ci_low": low, "loss_delta_ci_high": high,
        "per_thread_loss": {k: {"base": per_thread["base"][k], "adapter": per_thread["adapter"][k]} for k in keys},
    }


def _speaker_section(model, tokenizer, samples: list[dict], fmt, config: EvalConfig, precision: str) -> dict:
    """Next-speaker ranking at gold model turns, both arms, beside the simple baselines."""
    per_sample = max(1, math.ceil(config.speaker_turns / max(len(samples), 1)))
    targets = []  # (sample, turn index)
    for sample in samples:
        model_turns = [k for k, t in enumerate(sample["turns"]) if t["role"] == "model" and k > 0]
        targets += [(sample, k) for k in model_turns[-per_sample:]]
    targets = targets[: config.speaker_turns]
    rankings = {"base": [], "adapter": []}
    baseline_ranks: dict[str, list] = {}
    for sample, k in targets:
        first = ss.fitting_first_turn(sample, fmt, tokenizer, k, config.max_prompt_tokens)
        if first is None:
            continue
        roster = ss.roster_of(sample)
        with autocast(precision):
            rankings["adapter"].append(ss.rank_speakers(model, tokenizer, sample, fmt, k, roster, first))
            with model.disable_adapter():
                rankings["base"].append(ss.rank_speakers(model, tokenizer, sample, fmt, k, roster, first))
        speakers = [t["name"] for t in sample["turns"]]
        for name, ranks in ss.baseline_ranks(speakers, [k], roster).items():
            baseline_ranks.setdefault(name, []).extend(ranks)
    return {**{arm: ss.summarize_rankings(r) for arm, r in rankings.items()},
            "baselines": {name: ss.speaker_metrics(r) for name, r in baseline_ranks.items()}}


def _generation_section(model, tokenizer, samples: list[dict], fmt, config: EvalConfig,
                        precision: str) -> tuple[dict, list[dict]]:
    cases = ev.generation_cases(samples, fmt, tokenizer, config.max_prompt_tokens, config.max_generations)
    by_id = {s["sample_id"]: s for s in samples}
    rows = []
    for case in cases:
        with autocast(precision):
            with_adapter, adapter_cap = ev.generate(model, tokenizer, case.prompt, config.max_new_tokens)
            with model.disable_adapter():
                without, base_cap = ev.generate(model, tokenizer, case.prompt, config.max_new_tokens)
        history = [t["text"] for t in by_id[case.sample_id]["turns"]]
        history = history[: history.index(case.human_reply)] if case.human_reply in history else history
        row = {"thread_key": case.thread_key, "speaker": case.speaker, "user_character": case.user_character,
               "context_tail": case.prompt[-400:], "human": case.human_reply, "history": history}
        for arm, text, cap in (("base", without, base_cap), ("adapter", with_adapter, adapter_cap)):
            row[arm] = ev.cut_reply(text, fmt)[0]
            row[f"{arm}_raw"] = text
            row[f"{arm}_impersonates"] = ev.impersonates(text, case.user_character, fmt)
            row[f"{arm}_stop"] = em.stop_outcome(text, fmt.stop_strings, fmt.turn_suffix, cap)
            row[f"{arm}_leaks"] = em.template_leaks(row[arm])
        rows.append(row)

    def rate(flags):
        flags = list(flags)
        return sum(flags) / len(flags) if flags else float("nan")

    def overlap(texts, histories):
        values = [em.max_overlap_with_history(t, h) for t, h in zip(texts, histories)]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    human = [r["human"] for r in rows]
    histories = [r["history"] for r in rows]
    out = {"n": len(rows),
           "impersonation": em.paired_rates([r["base_impersonates"] for r in rows],
                                            [r["adapter_impersonates"] for r in rows]),
           "ooc_human": em.ooc_rate(human) if rows else float("nan"),
           "distinct2_human": em.distinct_n(human, 2) if rows else float("nan"),
           "history_overlap_human": overlap(human, histories)}
    for arm in ("base", "adapter"):
        texts = [r[arm] for r in rows]
        out[f"natural_stop_{arm}"] = rate(r[f"{arm}_stop"] == "natural_stop" for r in rows)
        out[f"run_on_{arm}"] = rate(r[f"{arm}_stop"] == "run_on" for r in rows)
        out[f"template_leak_{arm}"] = rate(r[f"{arm}_leaks"] for r in rows)
        out[f"ooc_{arm}"] = em.ooc_rate(texts) if rows else float("nan")
        out[f"distinct2_{arm}"] = em.distinct_n(texts, 2) if rows else float("nan")
        out[f"history_overlap_{arm}"] = overlap(texts, histories)
        out[f"length_{arm}"] = em.length_summary(texts, human)
    for r in rows:
        del r["history"]
    return out, rows


@dg.asset(group_name="evaluation", kinds={"pytorch"}, code_version=EVAL_CODE,
          deps=["lora_checkpoint", "tokenized_parquet", "base_model"],
          automation_condition=follow_new_checkpoint(),
          check_specs=[dg.AssetCheckSpec("adapter_not_worse_than_base", asset="eval_report", blocking=True,
                                         description="Model-turn loss of the adapter ≤ base + loss_tolerance.")])
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """Base model vs base + adapter on the held-out threads, in one model load: model-turn loss, perplexity
    and bits per byte with a paired bootstrap CI over threads; speaker selection beside simple baselines;
    greedy generations scored for impersonation, stops, template leaks, OOC, repetition and length.
    Markdown, self-contained HTML and JSON reports."""
    adapter = upstream(context, "lora_checkpoint")
    data = upstream(context, "tokenized_parquet")
    base = upstream(context, "base_model")
    inputs = {"code": EVAL_CODE, "config": config.model_dump(), "lora_checkpoint": adapter.data_version,
              "tokenized_parquet": data.data_version, "base_model": base.data_version}
    dumps = sorted((read_manifest(data.path) or {}).get("inputs", {}).get("augmented_prompts", {}))
    sample_sources = [upstream(context, "augmented_prompts", dump) for dump in dumps]

    def build(folder: Path) -> dict:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        training = json.loads((adapter.path / "training_config.json").read_text())
        fmt = get_format(training["format"])
        precision = resolve_precision(config.precision)
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        torch.manual_seed(0)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32),
                                          adapter.path)
        model.eval()
        rows = load_split(data.path / "tokenized.parquet", "eval")
        if not rows:
            raise dg.Failure(f"{data.path}: the eval split is empty; raise eval_fraction or min_eval_threads")
        samples = read_rows(data.path / "eval_samples.parquet")

        context.log.info(f"scoring {len(rows)} eval rows with and without the adapter ({precision})")
        loss = _loss_section(model, tokenizer, rows, config, precision)
        context.log.info(f"ranking next speakers at up to {config.speaker_turns} model turns")
        speakers = _speaker_section(model, tokenizer, samples, fmt, config, precision)
        context.log.info(f"generating up to {config.max_generations} greedy replies per arm")
        generation, cases = _generation_section(model, tokenizer, samples, fmt, config, precision)

        summary = {
            "format": fmt.name, "precision": precision,
            "base_model_path": str(base.path), "base_model_version": base.data_version,
            "adapter_path": str(adapter.path), "adapter_version": adapter.data_version,
            "eval_rows": len(rows), "eval_threads": len({r["thread_key"] for r in rows}),
            **loss, "speaker_selection": speakers, "generation": generation,
        }
        thread_losses = list(loss["per_thread_loss"].values())
        plots = {"loss_curve": (adapter.path / "loss_curve.png").read_bytes()
                 if (adapter.path / "loss_curve.png").exists() else None,
                 "thread_losses": paired_scatter_png([t["base"] for t in thread_losses],
                                                     [t["adapter"] for t in thread_losses])}
        # SillyTavern presets that assemble exactly the training format, beside the adapter and the card.
        presets = {"sillytavern-instruct.json": instruct_preset(fmt, eos_token=tokenizer.eos_token),
                   "sillytavern-context.json": context_preset(fmt)}
        for name, preset in presets.items():
            text = json.dumps(preset, indent=1, ensure_ascii=False)
            (folder / name).write_text(text, "utf-8")
            (adapter.path / name).write_text(text, "utf-8")
        all_samples = [s for up in sample_sources for s in read_rows(up.path / "samples.parquet")]
        card = model_card(fmt=fmt, bos_token=tokenizer.bos_token, example=samples[0], stats=dataset_statistics(all_samples),
                          training=training, summary=summary,
                          lineage={"base_model_path": str(base.path), "base_model_version": base.data_version,
                                   "tokenized_version": data.data_version, "presets": True})
        (folder / "model_card.md").write_text(card, "utf-8")
        (adapter.path / "README.md").write_text(card, "utf-8")  # the card travels with the adapter
        report = markdown_report(summary, cases)
        (folder / "report.md").write_text(report, "utf-8")
        (folder / "report.html").write_text(html_report(summary, cases, plots), "utf-8")
        (folder / "report.json").write_text(json.dumps({"summary": summary, "generations": cases}, indent=1,
                                                       ensure_ascii=False, default=float), "utf-8")
        g = generation
        return {
            **{k: summary[k] for k in ("model_turn_loss_base", "model_turn_loss_adapter", "perplexity_base",
                                       "perplexity_adapter", "bits_per_byte_base", "bits_per_byte_adapter",
                                       "loss_delta_ci_low", "loss_delta_ci_high", "eval_trained_tokens")},
            "speaker_accuracy_base": speakers["base"]["accuracy"],
            "speaker_accuracy_adapter": speakers["adapter"]["accuracy"],
            "impersonation_rate_base": g["impersonation"]["base_rate"],
            "impersonation_rate_adapter": g["impersonation"]["adapter_rate"],
            "natural_stop_rate_adapter": g["natural_stop_adapter"],
            "generations": g["n"],
            "report_path": dg.MetadataValue.path(str(folder / "report.md")),
            "report_html": dg.MetadataValue.path(str(folder / "report.html")),
            "model_card": dg.MetadataValue.path(str(adapter.path / "README.md")),
            "report": dg.MetadataValue.md(report),
        }

    built = build_or_reuse(context, lambda fp: store.dir_for("eval_report", fp), inputs, build,
                           content_globs=("report.json",))
    context.log.info(f"eval report: {built.path / 'report.md'}")
    m = built.metadata
    regression = m["model_turn_loss_adapter"] - m["model_turn_loss_base"]
    return built.result([dg.AssetCheckResult(
        check_name="adapter_not_worse_than_base", passed=bool(regression <= config.loss_tolerance),
        metadata={"loss_delta": regression, "tolerance": config.loss_tolerance})])
