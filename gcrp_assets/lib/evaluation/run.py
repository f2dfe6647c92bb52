"""The evaluation run behind `eval_report`, without Dagster: base model vs base + adapter on the held-out
threads, in one model load.

`evaluate(settings, inputs, out)` scores teacher-forced losses (model turns, and by role of the predicted
token, paired bootstrap over threads), speaker selection beside simple baselines, and greedy plus seeded
sampled generations (stops off, and on as shown); it writes the Markdown, HTML and JSON reports, the model
card and SillyTavern presets into `out` (never into the adapter's folder), and returns the summary, the
headline table and the few flat metrics the asset reports. Every setting is declared once, on `EvalSettings`
(`lib/evaluation/settings.py`; `gcrp_assets.orchestration.configs.EvalConfig` is generated from it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gcrp_assets.lib.evaluation import failure_modes as fm
from gcrp_assets.lib.evaluation import generation, losses, roles
from gcrp_assets.lib.evaluation import metrics as em
from gcrp_assets.lib.evaluation.model_card import dataset_statistics, model_card, recommended_sampling
from gcrp_assets.lib.evaluation.report import FAILURE_LABELS_TF, headline_table, html_report, markdown_report
from gcrp_assets.lib.evaluation.settings import EvalSettings
from gcrp_assets.lib.evaluation.scoring import score_continuation, summarize_generations, worst_first
from gcrp_assets.lib.formats.chat_format import get_format, render
from gcrp_assets.lib.formats.sillytavern_presets import write_presets
from gcrp_assets.lib.formats.tokenization import IGNORE, encode_rendered
from gcrp_assets.lib.parquet import read_rows
from gcrp_assets.lib.plots import (failure_mode_png, length_distribution_png, paired_scatter_png, role_loss_png,
                                   thread_delta_png)
from gcrp_assets.lib.progress import duration, progress_line, remaining_seconds
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
    model_card: Path               # model_card.md in the report's folder (the presets beside it)
    preview: str                   # Markdown for the UI: the summary, its plots, the three worst contexts
    headline: list[dict]           # the headline table's records (`report.headline_table`)


def _role_masks(rows: list[dict], samples: list[dict], fmt, tokenizer,
                max_turns: int = 0) -> tuple[list, list[dict], int, list[list], list[fm.TurnProbes]]:
    """Per row: the role of every token (None where the row cannot be re-derived), the UTF-8 bytes per role
    of the predicted tokens; the number of rows whose re-rendering did not reproduce the stored tokens; and
    the teacher-forced failure-mode probes of every model turn (`failure_modes.turn_probes`; a turn seen in
    two overlapping windows is measured once; at most `max_turns` turns when > 0)."""
    by_id = {s["sample_id"]: s for s in samples}
    masks, role_bytes, mismatches, probes, turns = [], [], 0, [], []
    seen: set[tuple[str, int]] = set()
    for row in rows:
        sample = by_id.get(row["sample_id"])
        mask = None
        counts: dict[str, int] = {}
        row_probes: list = []
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
                found, row_turns = fm.turn_probes(rendered, fmt, list(ids), [tuple(o) for o in offsets], tokenizer,
                                                  sample, row["thread_key"])
                for turn in row_turns:
                    if (turn.sample_id, turn.turn) in seen or (max_turns and len(turns) >= max_turns):
                        continue
                    seen.add((turn.sample_id, turn.turn))
                    # renumber this turn's probes into the row's kept list
                    kept = {}
                    for field_name in ("speaker", "stop", "impersonation"):
                        index = getattr(turn, field_name)
                        if index >= 0:
                            row_probes.append(found[index])
                            kept[field_name] = len(row_probes) - 1
                    turns.append((len(masks), fm.TurnProbes(**{**turn.__dict__, **kept})))
        if mask is None:
            mismatches += 1
        masks.append(mask)
        role_bytes.append(counts)
        probes.append(row_probes)
    return masks, role_bytes, mismatches, probes, turns


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


def _progress(log: Callable[[str], None], phase: str, every_s: float = 20.0):
    """A callback `(done, total, tokens)` that logs `losses 3/12 (25 %) · 41 tok/s · ETA 1 min` at most every
    `every_s` seconds (and at the end)."""
    started = time.perf_counter()
    state = {"tokens": 0, "logged": started}

    def report(done: int, total: int, tokens: int) -> None:
        state["tokens"] += tokens
        now = time.perf_counter()
        if done < total and now - state["logged"] < every_s:
            return
        state["logged"] = now
        elapsed = now - started
        log(progress_line(phase, done, total, [f"{state['tokens'] / max(elapsed, 1e-9):.0f} tok/s"],
                          remaining_seconds(done, total, elapsed)))

    return report


def loss_section(model, tokenizer, rows: list[dict], samples: list[dict], fmt, settings: EvalSettings,
                 precision: str, log: Callable[[str], None] = print) -> dict:
    """Teacher-forced losses per arm from one forward pass per row and arm: model-turn loss (the training
    labels; per thread with a paired bootstrap CI; bits per byte), the loss by role of the predicted
    token (model text, names, end of turn, user text, …) with the same paired statistics, and from the same
    passes the failure modes at every held-out model turn (`failure_modes`: speaker selection, stop and
    impersonation propensity), paired over threads."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    masks, role_bytes, mismatches, probes, turns = _role_masks(rows, samples, fmt, tokenizer, settings.speaker_turns)
    log(f"teacher-forced failure modes at {len(turns)} held-out model turns, from the loss passes")
    with autocast(precision):
        adapter_scores = losses.per_row_scores(model, rows, pad_id, settings.batch_size, roles=masks, probes=probes,
                                               progress=_progress(log, "losses (adapter)"))
        with model.disable_adapter():
            base_scores = losses.per_row_scores(model, rows, pad_id, settings.batch_size, roles=masks,
                                                probes=probes, progress=_progress(log, "losses (base)"))
    outcomes = {arm: [fm.turn_outcomes(turn, scores[r].probes) for r, turn in turns]
                for arm, scores in (("base", base_scores), ("adapter", adapter_scores))}
    failure = fm.summarize([t for _, t in turns], outcomes["base"], outcomes["adapter"],
                           settings.bootstrap_resamples, seed=0)
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
        "failure_modes": failure, "speaker_selection": speaker_selection(failure),
    }


def speaker_selection(failure: dict) -> dict:
    """The speaker-selection numbers of every held-out model turn (teacher-forced), in the report's shape:
    per arm n, accuracy, MRR and how often the top pick is the user's character; the baselines on the same
    turns; the paired CIs are in `failure_modes`."""
    acc, mrr, user = failure["speaker_accuracy"], failure["speaker_mrr"], failure["speaker_picks_user"]
    return {**{arm: {"n": acc["n"], "accuracy": acc[arm], "mrr": mrr[arm], "user_pick_rate": user[arm]}
               for arm in ("base", "adapter")},
            "baselines": failure["speaker_baselines"]}


def generation_section(model, tokenizer, samples: list[dict], fmt, settings: EvalSettings, precision: str,
                       cuda: bool, log: Callable[[str], None]) -> tuple[dict, list[dict]]:
    """Greedy and K sampled continuations per held-out context and arm, scored; the summary and the records."""
    n_contexts = settings.max_generations or (64 if cuda else 4)
    batch = settings.generation_batch_size or (16 if cuda else 4)
    sampling = recommended_sampling(fmt)
    temperature = settings.temperature if settings.temperature >= 0 else sampling["temperature"]
    min_p = settings.min_p if settings.min_p >= 0 else sampling["min_p"]
    max_new = settings.max_new_tokens or (512 if cuda else 32)
    k = settings.samples_per_context if settings.samples_per_context >= 0 else (2 if cuda else 1)
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

    def generate(arm):
        return generation.generate_batch(model, tokenizer, prompts, max_new_tokens=max_new, n_samples=k,
                                         temperature=temperature, min_p=min_p, seeds=seeds, batch_size=batch,
                                         eos_token_ids=eos_ids, progress=_progress(log, f"generation ({arm})"))

    for arm in ("adapter", "base"):
        with autocast(gen_precision):
            if arm == "base":
                with model.disable_adapter():
                    outputs[arm] = generate(arm)
            else:
                outputs[arm] = generate(arm)
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
    summary = summarize_generations(records, k, settings.min_events)
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
    """A few headline numbers as plain metadata, plottable over materializations (the full headline is the
    `headline` table): both model-turn losses and perplexities, the loss difference with its CI, the adapter's
    greedy impersonation rate, the sizes and the time."""
    g = summary["generation"]
    greedy = g.get("greedy", {})
    base, adapter = summary["model_turn_loss_base"], summary["model_turn_loss_adapter"]
    return {
        **{k: summary[k] for k in ("model_turn_loss_base", "model_turn_loss_adapter", "perplexity_base",
                                   "perplexity_adapter", "loss_delta", "loss_delta_ci_low", "loss_delta_ci_high")},
        "loss_drop_percent": round(100 * (1 - adapter / base), 2) if base else float("nan"),
        "impersonation_rate_adapter": greedy.get("rates", {}).get("impersonation", {}).get("adapter_rate",
                                                                                        float("nan")),
        "eval_model_turns": summary["failure_modes"]["stop_probability"]["n"] if "failure_modes" in summary else 0,
        "generations": g["n"],
        "eval_seconds": round(sum(timings.values()), 1),
    }


# Plots shown in the UI's `report` Markdown (all of them are in report.md / report.html), as small thumbnails:
# the Markdown is stored with every materialization in the instance's event log.
UI_PLOTS = ("thread_deltas", "failure_modes", "role_losses")


def _thumbnail(png: bytes | None, scale: float = 0.8, colors: int = 64) -> bytes | None:
    """A smaller copy of a plot for the UI: scaled down and reduced to a palette (plots have few colours), a
    third or less of the bytes. Deterministic."""
    if not png:
        return png
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _plots(summary: dict, adapter: Path) -> dict:
    loss, generated = summary, summary["generation"]
    thread_losses = list(loss["per_thread_loss"].items())
    deltas = [t["adapter"] - t["base"] for _, t in thread_losses]
    lengths = {"human": generated["human"]["lengths"]}
    for decoding in ("greedy", "sampled"):
        if decoding in generated:
            for arm in ("base", "adapter"):
                lengths[f"{arm} {decoding}"] = generated[decoding][arm]["lengths"]
    failure = [(label, loss.get("failure_modes", {}).get(key)) for key, label in FAILURE_LABELS_TF]
    failure = [(label.split(":")[0].split(" (")[0], q) for label, q in failure if q and q.get("n")]
    return {"loss_curve": (adapter / "loss_curve.png").read_bytes() if (adapter / "loss_curve.png").exists() else None,
            "thread_losses": paired_scatter_png([t["base"] for _, t in thread_losses],
                                                [t["adapter"] for _, t in thread_losses]),
            "thread_deltas": thread_delta_png([k for k, _ in thread_losses], deltas,
                                              loss["loss_delta_mean_per_thread"], loss["loss_delta_mean_ci_low"],
                                              loss["loss_delta_mean_ci_high"]),
            "failure_modes": failure_mode_png([f[0] for f in failure], [f[1]["base"] for f in failure],
                                              [f[1]["adapter"] for f in failure], [f[1]["ci_low"] for f in failure],
                                              [f[1]["ci_high"] for f in failure]) if failure else None,
            "role_losses": role_loss_png({r: v for r, v in loss["role_losses"].items() if v.get("tokens")}),
            "lengths": length_distribution_png(lengths)}


def evaluate(settings: EvalSettings, inputs: EvalInputs, out: Path,
             log: Callable[[str], None] = print) -> EvalResult:
    """Base model vs base + adapter on the held-out threads, in one model load: model-turn loss, perplexity
    and bits per byte with a cluster-bootstrap CI over threads, and from the same forward passes the loss on
    user turns, speaker names and the end-of-turn marker and the failure modes at every held-out model turn
    (speaker selection beside simple baselines, stop and impersonation propensity); greedy and seeded sampled
    generations (stops off, and on as shown) scored for impersonation, stops, template leaks, OOC, repetition
    and length, McNemar-tested where the events allow. Writes report.md, report.html, report.json, the model
    card (model_card.md) and the SillyTavern presets into `out` only: the adapter's folder, an artifact with
    its own recorded data version, is read, never written. Raises `EvaluationError` when the eval split is
    empty."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
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
    log(f"phase 1/3 · losses and teacher-forced failure modes: {len(rows)} eval rows, both arms ({precision})")
    loss = loss_section(model, tokenizer, rows, samples, fmt, settings, precision, log)
    timings["losses_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    log(f"phase 2/3 · generation · {duration(time.perf_counter() - started)} so far")
    generated, cases = generation_section(model, tokenizer, samples, fmt, settings, precision, cuda, log)
    timings["generation_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    log(f"phase 3/3 · reports, model card and presets · {duration(time.perf_counter() - started)} so far")

    summary = {
        "format": fmt.name, "precision": precision, "device": "cuda" if cuda else "cpu",
        "base_model_path": str(inputs.base_model), "base_model_version": inputs.base_model_version,
        "adapter_path": str(adapter), "adapter_version": inputs.adapter_version,
        "eval_rows": len(rows), "eval_threads": len({r["thread_key"] for r in rows}),
        **loss, "generation": generated,
    }
    plots = _plots(summary, adapter)
    # SillyTavern presets that assemble exactly the training format, beside the card in this report's folder.
    presets = write_presets(out, fmt, sampling=recommended_sampling(fmt), eos_token=tokenizer.eos_token)
    all_samples = [s for path in inputs.sample_files for s in read_rows(Path(path))]
    card = model_card(fmt=fmt, bos_token=tokenizer.bos_token, example=samples[0],
                      stats=dataset_statistics(all_samples), training=training, summary=summary,
                      lineage={"base_model_name": inputs.base_model_name,
                               "base_model_version": inputs.base_model_version,
                               "tokenized_version": inputs.tokenized_version,
                               "adapter_version": inputs.adapter_version,
                               "adapter": f"{adapter.parent.name}/{adapter.name}",
                               "presets": presets})
    (out / "model_card.md").write_text(card, "utf-8")
    timings["reports_s"] = time.perf_counter() - t0
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    shown = worst_first(cases)[: max(0, settings.report_samples)]
    (out / "report.md").write_text(markdown_report(summary, shown, plots), "utf-8")
    (out / "report.html").write_text(html_report(summary, shown, plots), "utf-8")
    (out / "report.json").write_text(json.dumps({"summary": summary, "generations": cases}, indent=1,
                                                ensure_ascii=False, default=float), "utf-8")
    log("eval done in " + duration(time.perf_counter() - started) + ": "
        + ", ".join(f"{k[:-2]} {duration(v)}" for k, v in timings.items()))
    return EvalResult(summary=summary, metrics=flat_metrics(summary, timings), report_md=out / "report.md",
                      report_html=out / "report.html", model_card=out / "model_card.md",
                      preview=markdown_report(summary, shown[:3], {k: _thumbnail(plots.get(k)) for k in UI_PLOTS},
                                              plot_keys=UI_PLOTS),
                      headline=headline_table(summary))
