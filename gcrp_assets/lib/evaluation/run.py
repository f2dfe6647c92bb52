"""The evaluation run behind `eval_report`, without Dagster: base model vs base + adapter on the held-out
threads, in one model load.

`evaluate(settings, inputs, out)` scores teacher-forced losses (model turns, and by role of the predicted
token, paired bootstrap over threads), speaker selection beside simple baselines, and greedy plus seeded
sampled generations (stops off, and on as shown); it writes the Markdown, HTML and JSON reports, the model
card and SillyTavern presets (into `out`, the card and presets also beside the adapter), and returns the
summary with the flat metrics the asset reports. Every setting is declared once, on `EvalSettings`
(`lib/evaluation/settings.py`; `gcrp_assets.orchestration.configs.EvalConfig` is generated from it).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gcrp_assets.lib.evaluation import generation, losses, roles
from gcrp_assets.lib.evaluation import metrics as em
from gcrp_assets.lib.evaluation import speakers as ss
from gcrp_assets.lib.evaluation.model_card import dataset_statistics, model_card, recommended_sampling
from gcrp_assets.lib.evaluation.report import html_report, markdown_report
from gcrp_assets.lib.evaluation.settings import EvalSettings
from gcrp_assets.lib.evaluation.scoring import score_continuation, summarize_generations, worst_first
from gcrp_assets.lib.formats.chat_format import get_format, render
from gcrp_assets.lib.formats.sillytavern_presets import context_preset, instruct_preset
from gcrp_assets.lib.formats.tokenization import IGNORE, encode_rendered
from gcrp_assets.lib.parquet import read_rows
from gcrp_assets.lib.plots import length_distribution_png, paired_scatter_png, role_loss_png, thread_delta_png
from gcrp_assets.lib.training.data import load_split
from gcrp_assets.lib.training.precision import autocast, resolve_precision

# Roles whose teacher-forced loss is reported beside the model-turn loss (lib/evaluation/roles.py, role_mask).
REPORTED_ROLES = ("model_text", "model_name", "model_end", "user_text", "user_name", "user_end")


class EvaluationError(RuntimeError):
    """The evaluation cannot run on these inputs (e.g. an empty eval split)."""


@dataclass(frozen=True)
class EvalInputs:
    """Where the evaluation reads from, and the versions the model card records."""
    base_model: Path               # a Hugging Face model directory
    adapter: Path                  # the LoRA checkpoint folder (training_config.json, adapter weights)
    tokenized: Path                # the tokenized_parquet folder (tokenized.parquet, eval_samples.parquet)
    sample_files: tuple[Path, ...] = ()   # every dump's samples.parquet of the training set (dataset statistics)
    base_model_name: str = ""
    base_model_version: str = ""
    adapter_version: str = ""
    tokenized_version: str = ""


@dataclass
class EvalResult:
    summary: dict                  # what report.json holds under "summary"
    metrics: dict                  # flat numbers: the asset's metadata
    report_md: Path
    report_html: Path
    model_card: Path               # the card beside the adapter (README.md)
    preview: str                   # Markdown: the summary with the three worst contexts


def _role_masks(rows: list[dict], samples: list[dict], fmt, tokenizer) -> tuple[list, list[dict], int]:
    """Per row: the role of every token (None where the row cannot be re-derived), the UTF-8 bytes per role
    of the predicted tokens, and the number of rows whose re-rendering did not reproduce the stored tokens."""
    by_id = {s["sample_id"]: s for s in samples}
    masks, role_bytes, mismatches = [], [], 0
    for row in rows:
        sample = by_id.get(row["sample_id"])
        mask = None
        counts: dict[str, int] = {}
        if sample is not None and row.get("first_turn") is not None:
            rendered = render(sample, fmt, tokenizer.bos_token, (row["first_turn"], row["last_turn"]),
                              eos_token=tokenizer.eos_token)
            ids, offsets = encode_rendered(tokenizer, rendered)
            if list(ids) == list(row["input_ids"]) and (not row.get("text") or rendered.text == row["text"]):
                mask = roles.role_mask(rendered, fmt, offsets)
                for (a, b), role in list(zip(offsets, mask))[1:]:
                    if role != roles.OTHER:
                        name = roles.ROLE_NAMES[role]
                        counts[name] = counts.get(name, 0) + em.utf8_bytes(rendered.text[a:b])
        if mask is None:
            mismatches += 1
        masks.append(mask)
        role_bytes.append(counts)
    return masks, role_bytes, mismatches


def _paired(per_row_base, per_row_adapter, rows, settings: EvalSettings) -> dict:
    """Per-thread token-weighted losses of both arms; the token-weighted difference (adapter − base) with a
    cluster bootstrap CI over threads of that same statistic (`diff`, `low`, `high`); and the mean of the
    per-thread differences with its own paired bootstrap CI (`mean`, `mean_low`, `mean_high`, for the
    per-thread plot)."""
    sums = {arm: em.thread_sums({"thread_key": r["thread_key"], "nll": n, "tokens": t}
                                for r, (n, t) in zip(rows, pairs))
            for arm, pairs in (("base", per_row_base), ("adapter", per_row_adapter))}
    per_thread = {arm: {k: nll / tokens for k, (nll, tokens) in arm_sums.items()} for arm, arm_sums in sums.items()}
    keys, deltas = em.paired_thread_deltas(per_thread["base"], per_thread["adapter"])
    diff, low, high = em.cluster_bootstrap_difference([sums["base"][k][0] for k in keys],
                                                      [sums["adapter"][k][0] for k in keys],
                                                      [sums["base"][k][1] for k in keys],
                                                      settings.bootstrap_resamples, seed=0)
    mean, mean_low, mean_high = em.paired_bootstrap(deltas, settings.bootstrap_resamples, seed=0)
    return {"keys": keys, "deltas": deltas.tolist(), "diff": diff, "low": low, "high": high,
            "mean": mean, "mean_low": mean_low, "mean_high": mean_high, "per_thread": per_thread}


def loss_section(model, tokenizer, rows: list[dict], samples: list[dict], fmt, settings: EvalSettings,
                 precision: str) -> dict:
    """Teacher-forced losses per arm from one forward pass per row and arm: model-turn loss (the training
    labels; per thread with a paired bootstrap CI; bits per byte), and the loss by role of the predicted
    token (model text, names, end of turn, user text, …) with the same paired statistics."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    masks, role_bytes, mismatches = _role_masks(rows, samples, fmt, tokenizer)
    with autocast(precision):
        adapter_scores = losses.per_row_scores(model, rows, pad_id, settings.batch_size, roles=masks)
        with model.disable_adapter():
            base_scores = losses.per_row_scores(model, rows, pad_id, settings.batch_size, roles=masks)
    base_nll = [(s.nll, s.tokens) for s in base_scores]
    adapter_nll = [(s.nll, s.tokens) for s in adapter_scores]
    base, adapter = losses.totals(base_nll), losses.totals(adapter_nll)
    n_bytes = sum(em.utf8_bytes(tokenizer.decode([t for t, l in zip(r["input_ids"], r["labels"]) if l != IGNORE]))
                  for r in rows)
    paired = _paired(base_nll, adapter_nll, rows, settings)
    scored = [k for k, m in enumerate(masks) if m is not None]
    by_role = {}
    for role in REPORTED_ROLES:
        b = [base_scores[k].roles.get(role, (0.0, 0)) for k in scored]
        a = [adapter_scores[k].roles.get(role, (0.0, 0)) for k in scored]
        tb, ta = losses.totals(b), losses.totals(a)
        if not tb.tokens:
            by_role[role] = {"tokens": 0}
            continue
        p = _paired(b, a, [rows[k] for k in scored], settings)
        nbytes = sum(role_bytes[k].get(role, 0) for k in scored)
        by_role[role] = {"tokens": tb.tokens, "bytes": nbytes, "threads": len(p["keys"]),
                         "loss_base": tb.loss, "loss_adapter": ta.loss,
                         "perplexity_base": tb.perplexity, "perplexity_adapter": ta.perplexity,
                         "bits_per_byte_base": em.bits_per_byte(tb.nll, nbytes),
                         "bits_per_byte_adapter": em.bits_per_byte(ta.nll, nbytes),
                         "delta": p["diff"], "delta_ci_low": p["low"], "delta_ci_high": p["high"],
                         "delta_mean_per_thread": p["mean"], "delta_mean_ci_low": p["mean_low"],
                         "delta_mean_ci_high": p["mean_high"],
                         "per_thread": {k: {"base": p["per_thread"]["base"][k],
                                            "adapter": p["per_thread"]["adapter"][k]} for k in p["keys"]}}
    return {
        "model_turn_loss_base": base.loss, "model_turn_loss_adapter": adapter.loss,
        "perplexity_base": base.perplexity, "perplexity_adapter": adapter.perplexity,
        "bits_per_byte_base": em.bits_per_byte(base.nll, n_bytes),
        "bits_per_byte_adapter": em.bits_per_byte(adapter.nll, n_bytes),
        "eval_trained_tokens": adapter.tokens,
        "loss_delta": paired["diff"], "loss_delta_ci_low": paired["low"], "loss_delta_ci_high": paired["high"],
        "loss_delta_mean_per_thread": paired["mean"], "loss_delta_mean_ci_low": paired["mean_low"],
        "loss_delta_mean_ci_high": paired["mean_high"],
        "per_thread_loss": {k: {"base": paired["per_thread"]["base"][k], "adapter": paired["per_thread"]["adapter"][k]}
                            for k in paired["keys"]},
        "role_losses": by_role, "role_mask_rows": len(scored), "role_mask_mismatches": mismatches,
    }


def speaker_section(model, tokenizer, samples: list[dict], fmt, settings: EvalSettings, precision: str) -> dict:
    """Next-speaker ranking at gold model turns, both arms, beside the simple baselines."""
    per_sample = max(1, math.ceil(settings.speaker_turns / max(len(samples), 1)))
    targets = []  # (sample, turn index)
    for sample in samples:
        model_turns = [k for k, t in enumerate(sample["turns"]) if t["role"] == "model" and k > 0]
        targets += [(sample, k) for k in model_turns[-per_sample:]]
    targets = targets[: settings.speaker_turns]
    rankings = {"base": [], "adapter": []}
    baseline_ranks: dict[str, list] = {}
    for sample, k in targets:
        first = ss.fitting_first_turn(sample, fmt, tokenizer, k, settings.max_prompt_tokens)
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


def generation_section(model, tokenizer, samples: list[dict], fmt, settings: EvalSettings, precision: str,
                       cuda: bool, log: Callable[[str], None]) -> tuple[dict, list[dict]]:
    """Greedy and K sampled continuations per held-out context and arm, scored; the summary and the records."""
    n_contexts = settings.max_generations or (64 if cuda else 8)
    batch = settings.generation_batch_size or (16 if cuda else 4)
    sampling = recommended_sampling(fmt)
    temperature = settings.temperature if settings.temperature >= 0 else sampling["temperature"]
    min_p = settings.min_p if settings.min_p >= 0 else sampling["min_p"]
    max_new = settings.max_new_tokens or (512 if cuda else 40)
    k = max(0, settings.samples_per_context)
    cases = generation.generation_cases(samples, fmt, tokenizer, settings.max_prompt_tokens, n_contexts)
    seeds = [settings.seed * 1_000_003 + i for i in range(len(cases))]
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    generation_eos = generation_eos if isinstance(generation_eos, list) else [generation_eos]
    eos_ids = sorted({i for i in (tokenizer.eos_token_id, *generation_eos) if isinstance(i, int)})
    log(f"generating from {len(cases)} contexts: greedy + {k} samples (temperature {temperature}, min_p {min_p}, "
        f"seed {settings.seed}) x {max_new} tokens per arm, batches of {batch}")
    outputs = {}
    prompts = [c.prompt for c in cases]
    # On a CPU, decoding runs in fp32: autocast re-casts every frozen weight to bf16 at each new token, which
    # makes one-token steps slower than fp32 (the teacher-forced passes amortize it over whole rows).
    gen_precision = precision if cuda else "fp32"

    def generate():
        return generation.generate_batch(model, tokenizer, prompts, max_new_tokens=max_new, n_samples=k,
                                         temperature=temperature, min_p=min_p, seeds=seeds, batch_size=batch,
                                         eos_token_ids=eos_ids)

    for arm in ("adapter", "base"):
        with autocast(gen_precision):
            if arm == "base":
                with model.disable_adapter():
                    outputs[arm] = generate()
            else:
                outputs[arm] = generate()
    by_thread: dict[str, list[str]] = {}
    for s in samples:
        by_thread.setdefault(s["thread_key"], []).extend(t["text"] for t in s["turns"])
    records = []
    for i, case in enumerate(cases):
        records.append({
            "context": i, "sample_id": case.sample_id, "thread_key": case.thread_key, "turn": case.turn,
            "speaker": case.speaker, "user_character": case.user_character, "seed": seeds[i],
            "context_tail": case.prompt[-600:], "human": case.human_reply, "history": list(case.history),
            "thread_turns": by_thread.get(case.thread_key, []),
            **{arm: [score_continuation(c, case, fmt, tokenizer.eos_token) for c in outputs[arm][i]]
               for arm in ("base", "adapter")},
        })
    summary = summarize_generations(records, k)
    summary.update({"n": len(records), "n_contexts": len(records), "samples_per_context": k,
                    "settings": {"temperature": temperature, "min_p": min_p, "seed": settings.seed,
                                 "max_new_tokens": max_new, "max_prompt_tokens": settings.max_prompt_tokens,
                                 "batch_size": batch, "precision": gen_precision,
                                 "stop_markers": generation.stop_markers(fmt, tokenizer.eos_token),
                                 "eos_token_ids": eos_ids}})
    for r in records:
        del r["history"], r["thread_turns"]
    return summary, records


def _eval_rows(tokenized: Path) -> list[dict]:
    """The eval split's rows, with the columns that let a row be re-rendered (when the file has them)."""
    import pyarrow.parquet as pq

    path = tokenized / "tokenized.parquet"
    rows = load_split(path, "eval")
    if not rows:
        raise EvaluationError(f"{tokenized}: the eval split is empty; raise eval_fraction or min_eval_threads")
    names = set(pq.read_schema(path).names)
    extra = [c for c in ("first_turn", "last_turn", "text") if c in names]
    if extra:
        table = pq.read_table(path, columns=["split", *extra]).to_pylist()
        for row, more in zip(rows, [t for t in table if t["split"] == "eval"]):
            row.update({c: more[c] for c in extra})
    return rows


def flat_metrics(summary: dict, timings: dict[str, float]) -> dict:
    """The summary's headline numbers, one level deep (the asset's metadata)."""
    roles_ = summary["role_losses"]
    g = summary["generation"]
    speakers = summary["speaker_selection"]
    greedy, sampled = g.get("greedy", {}), g.get("sampled", {})

    def role(name, key):
        return roles_.get(name, {}).get(key, float("nan"))

    def rates(section, key, arm):
        return section.get("rates", {}).get(key, {}).get(f"{arm}_rate", float("nan"))

    return {
        **{k: summary[k] for k in ("model_turn_loss_base", "model_turn_loss_adapter", "perplexity_base",
                                   "perplexity_adapter", "bits_per_byte_base", "bits_per_byte_adapter",
                                   "loss_delta_ci_low", "loss_delta_ci_high", "eval_trained_tokens")},
        **{f"{name}_loss_{arm}": role(name, f"loss_{arm}")
           for name in ("user_text", "model_name", "model_end") for arm in ("base", "adapter")},
        "user_text_loss_delta_ci_low": role("user_text", "delta_ci_low"),
        "user_text_loss_delta_ci_high": role("user_text", "delta_ci_high"),
        "speaker_accuracy_base": speakers["base"]["accuracy"],
        "speaker_accuracy_adapter": speakers["adapter"]["accuracy"],
        "impersonation_rate_base": rates(greedy, "impersonation", "base"),
        "impersonation_rate_adapter": rates(greedy, "impersonation", "adapter"),
        "impersonation_rate_sampled_base": rates(sampled, "impersonation", "base"),
        "impersonation_rate_sampled_adapter": rates(sampled, "impersonation", "adapter"),
        "run_on_rate_adapter": rates(greedy, "run_on", "adapter"),
        "natural_stop_rate_adapter": rates(greedy, "natural_stop", "adapter"),
        "ooc_rate_sampled_adapter": rates(sampled, "ooc", "adapter"),
        "ooc_rate_human": g["human"]["ooc"],
        "distinct2_sampled_adapter": sampled.get("adapter", {}).get("distinct2", float("nan")),
        "distinct2_human": g["human"]["distinct2"],
        "generations": g["n"],
        "samples_per_context": g["samples_per_context"],
        "eval_seconds_generation": round(timings["generation_s"], 1),
        "eval_seconds_losses": round(timings["losses_s"], 1),
    }


def _plots(summary: dict, adapter: Path) -> dict:
    loss, generated = summary, summary["generation"]
    thread_losses = list(loss["per_thread_loss"].items())
    deltas = [t["adapter"] - t["base"] for _, t in thread_losses]
    lengths = {"human": generated["human"]["lengths"]}
    for decoding in ("greedy", "sampled"):
        if decoding in generated:
            for arm in ("base", "adapter"):
                lengths[f"{arm} {decoding}"] = generated[decoding][arm]["lengths"]
    return {"loss_curve": (adapter / "loss_curve.png").read_bytes() if (adapter / "loss_curve.png").exists() else None,
            "thread_losses": paired_scatter_png([t["base"] for _, t in thread_losses],
                                                [t["adapter"] for _, t in thread_losses]),
            "thread_deltas": thread_delta_png([k for k, _ in thread_losses], deltas,
                                              loss["loss_delta_mean_per_thread"], loss["loss_delta_mean_ci_low"],
                                              loss["loss_delta_mean_ci_high"]),
            "role_losses": role_loss_png({r: v for r, v in loss["role_losses"].items() if v.get("tokens")}),
            "lengths": length_distribution_png(lengths)}


def evaluate(settings: EvalSettings, inputs: EvalInputs, out: Path,
             log: Callable[[str], None] = print) -> EvalResult:
    """Base model vs base + adapter on the held-out threads, in one model load: model-turn loss, perplexity
    and bits per byte with a paired bootstrap CI over threads, and from the same forward pass the loss on user
    turns, speaker names and the end-of-turn marker; speaker selection beside simple baselines; greedy and
    seeded sampled generations (stops off, and on as shown) scored for impersonation, stops, template leaks,
    OOC, repetition and length, McNemar-tested. Writes report.md, report.html, report.json, model_card.md
    and the SillyTavern presets into `out`; the card (as README.md) and the presets also beside the adapter.
    Raises `EvaluationError` when the eval split is empty."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(inputs.adapter)
    training = json.loads((adapter / "training_config.json").read_text())
    fmt = get_format(training["format"])
    precision = resolve_precision(settings.precision)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(inputs.base_model)
    torch.manual_seed(0)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(inputs.base_model, dtype=torch.float32),
                                      adapter)
    if cuda:
        model = model.to("cuda")
    model.eval()
    rows = _eval_rows(Path(inputs.tokenized))
    samples = read_rows(Path(inputs.tokenized) / "eval_samples.parquet")

    timings = {}
    t0 = time.perf_counter()
    log(f"scoring {len(rows)} eval rows with and without the adapter ({precision})")
    loss = loss_section(model, tokenizer, rows, samples, fmt, settings, precision)
    timings["losses_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    log(f"ranking next speakers at up to {settings.speaker_turns} model turns")
    speakers = speaker_section(model, tokenizer, samples, fmt, settings, precision)
    timings["speaker_selection_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    generated, cases = generation_section(model, tokenizer, samples, fmt, settings, precision, cuda, log)
    timings["generation_s"] = time.perf_counter() - t0
    log("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    summary = {
        "format": fmt.name, "precision": precision, "device": "cuda" if cuda else "cpu",
        "base_model_path": str(inputs.base_model), "base_model_version": inputs.base_model_version,
        "adapter_path": str(adapter), "adapter_version": inputs.adapter_version,
        "eval_rows": len(rows), "eval_threads": len({r["thread_key"] for r in rows}),
        **loss, "speaker_selection": speakers, "generation": generated,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    plots = _plots(summary, adapter)
    # SillyTavern presets that assemble exactly the training format, beside the adapter and the card.
    presets = {"sillytavern-instruct.json": instruct_preset(fmt, eos_token=tokenizer.eos_token),
               "sillytavern-context.json": context_preset(fmt)}
    for name, preset in presets.items():
        text = json.dumps(preset, indent=1, ensure_ascii=False)
        (out / name).write_text(text, "utf-8")
        (adapter / name).write_text(text, "utf-8")
    all_samples = [s for path in inputs.sample_files for s in read_rows(Path(path))]
    card = model_card(fmt=fmt, bos_token=tokenizer.bos_token, example=samples[0],
                      stats=dataset_statistics(all_samples), training=training, summary=summary,
                      lineage={"base_model_name": inputs.base_model_name,
                               "base_model_version": inputs.base_model_version,
                               "tokenized_version": inputs.tokenized_version, "presets": True})
    (out / "model_card.md").write_text(card, "utf-8")
    (adapter / "README.md").write_text(card, "utf-8")  # the card travels with the adapter
    shown = worst_first(cases)[: max(0, settings.report_samples)]
    (out / "report.md").write_text(markdown_report(summary, shown, plots), "utf-8")
    (out / "report.html").write_text(html_report(summary, shown, plots), "utf-8")
    (out / "report.json").write_text(json.dumps({"summary": summary, "generations": cases}, indent=1,
                                                ensure_ascii=False, default=float), "utf-8")
    return EvalResult(summary=summary, metrics=flat_metrics(summary, timings), report_md=out / "report.md",
                      report_html=out / "report.html", model_card=adapter / "README.md",
                      preview=markdown_report(summary, shown[:3], None))
