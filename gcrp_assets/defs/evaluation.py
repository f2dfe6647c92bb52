"""eval_report: base model vs base + adapter on the held-out threads."""

import json
import math
from pathlib import Path

import dagster as dg

from gcrp_assets.orchestration.artifacts import build_or_reuse, code_version, latest_materialization, read_manifest, upstream
from gcrp_assets.defs.automation import follow_new_checkpoint
from gcrp_assets.orchestration.configs import EvalConfig
from gcrp_assets.orchestration.resources import ArtifactStore
from gcrp_assets.lib.evaluation import metrics as em
from gcrp_assets.lib.evaluation import detectors, generation, losses, roles
from gcrp_assets.lib.evaluation import speakers as ss
from gcrp_assets.lib.formats.chat_format import get_format, render
from gcrp_assets.lib.evaluation.model_card import dataset_statistics, model_card, recommended_sampling
from gcrp_assets.lib.clean.ooc import split_ooc
from gcrp_assets.lib.formats.sillytavern_presets import context_preset, instruct_preset
from gcrp_assets.lib.parquet import read_rows
from gcrp_assets.lib.plots import length_distribution_png, paired_scatter_png, role_loss_png, thread_delta_png
from gcrp_assets.lib.training.precision import autocast, resolve_precision
from gcrp_assets.lib.evaluation.report import html_report, markdown_report
from gcrp_assets.lib.formats.tokenization import IGNORE, encode_rendered
from gcrp_assets.lib.training.data import load_split

EVAL_CODE = code_version(__name__)  # every project file this module imports (lib.code_closure)

# Roles whose teacher-forced loss is reported beside the model-turn loss (lib/evaluation/roles.py, role_mask).
REPORTED_ROLES = ("model_text", "model_name", "model_end", "user_text", "user_name", "user_end")


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


def _paired(per_row_base, per_row_adapter, rows, config) -> dict:
    """Per-thread token-weighted losses of both arms, and the paired bootstrap of their difference."""
    per_thread = {arm: em.thread_level_losses({"thread_key": r["thread_key"], "nll": n, "tokens": t}
                                              for r, (n, t) in zip(rows, pairs))
                  for arm, pairs in (("base", per_row_base), ("adapter", per_row_adapter))}
    keys, deltas = em.paired_thread_deltas(per_thread["base"], per_thread["adapter"])
    mean, low, high = em.paired_bootstrap(deltas, config.bootstrap_resamples, seed=0)
    return {"keys": keys, "deltas": deltas.tolist(), "mean": mean, "low": low, "high": high,
            "per_thread": per_thread}


def _loss_section(model, tokenizer, rows: list[dict], samples: list[dict], fmt, config: EvalConfig,
                  precision: str) -> dict:
    """Teacher-forced losses per arm from one forward pass per row and arm: model-turn loss (the training
    labels; per thread with a paired bootstrap CI; bits per byte), and the loss by role of the predicted
    token (model text, names, end of turn, user text, …) with the same paired statistics."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    masks, role_bytes, mismatches = _role_masks(rows, samples, fmt, tokenizer)
    with autocast(precision):
        adapter_scores = losses.per_row_scores(model, rows, pad_id, config.batch_size, roles=masks)
        with model.disable_adapter():
            base_scores = losses.per_row_scores(model, rows, pad_id, config.batch_size, roles=masks)
    base_nll = [(s.nll, s.tokens) for s in base_scores]
    adapter_nll = [(s.nll, s.tokens) for s in adapter_scores]
    base, adapter = losses.totals(base_nll), losses.totals(adapter_nll)
    n_bytes = sum(em.utf8_bytes(tokenizer.decode([t for t, l in zip(r["input_ids"], r["labels"]) if l != IGNORE]))
                  for r in rows)
    paired = _paired(base_nll, adapter_nll, rows, config)
    scored = [k for k, m in enumerate(masks) if m is not None]
    roles = {}
    for role in REPORTED_ROLES:
        b = [base_scores[k].roles.get(role, (0.0, 0)) for k in scored]
        a = [adapter_scores[k].roles.get(role, (0.0, 0)) for k in scored]
        tb, ta = losses.totals(b), losses.totals(a)
        if not tb.tokens:
            roles[role] = {"tokens": 0}
            continue
        p = _paired(b, a, [rows[k] for k in scored], config)
        nbytes = sum(role_bytes[k].get(role, 0) for k in scored)
        roles[role] = {"tokens": tb.tokens, "bytes": nbytes, "threads": len(p["keys"]),
                       "loss_base": tb.loss, "loss_adapter": ta.loss,
                       "perplexity_base": tb.perplexity, "perplexity_adapter": ta.perplexity,
                       "bits_per_byte_base": em.bits_per_byte(tb.nll, nbytes),
                       "bits_per_byte_adapter": em.bits_per_byte(ta.nll, nbytes),
                       "delta_mean_per_thread": p["mean"], "delta_ci_low": p["low"], "delta_ci_high": p["high"],
                       "per_thread": {k: {"base": p["per_thread"]["base"][k], "adapter": p["per_thread"]["adapter"][k]}
                                      for k in p["keys"]}}
    return {
        "model_turn_loss_base": base.loss, "model_turn_loss_adapter": adapter.loss,
        "perplexity_base": base.perplexity, "perplexity_adapter": adapter.perplexity,
        "bits_per_byte_base": em.bits_per_byte(base.nll, n_bytes),
        "bits_per_byte_adapter": em.bits_per_byte(adapter.nll, n_bytes),
        "eval_trained_tokens": adapter.tokens,
        "loss_delta_mean_per_thread": paired["mean"], "loss_delta_ci_low": paired["low"],
        "loss_delta_ci_high": paired["high"],
        "per_thread_loss": {k: {"base": paired["per_thread"]["base"][k], "adapter": paired["per_thread"]["adapter"][k]}
                            for k in paired["keys"]},
        "role_losses": roles, "role_mask_rows": len(scored), "role_mask_mismatches": mismatches,
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


# Binary outcomes of one continuation, each compared base vs adapter with McNemar's test. "off": the whole
# continuation generated with stop strings off; "on": the reply shown with them on (derived exactly).
BINARY = (
    ("impersonation", "writes a turn for the user's character (stops off)"),
    ("other_character", "starts another character's turn (stops off)"),
    ("run_on", "goes on past its end of turn (stops off)"),
    ("natural_stop", "ends its turn by itself before the token cap (stops off)"),
    ("truncated", "hits the token cap without ending its turn (stops off)"),
    ("impersonation_shown", "a turn for the user's character inside the shown reply (stops on)"),
    ("other_character_shown", "another character's turn inside the shown reply (stops on)"),
    ("truncated_shown", "no stop string or EOS before the token cap (stops on)"),
    ("template_leak", "a template marker inside the shown reply (stops on)"),
    ("ooc", "an out-of-character remark in the shown reply (stops on)"),
)


def score_continuation(cont: "generation.Continuation", case: "generation.GenerationCase", fmt, eos_token) -> dict:
    """Detector outcomes of one continuation, with stops off (the continuation) and on (the shown reply)."""
    text = cont.text
    shown, fired = generation.stops_on(text, fmt, eos_token)
    others = [n for n in case.roster if n not in (case.speaker, case.user_character)]
    offset = detectors.impersonation_offset(text, case.user_character, fmt)
    outcome = em.stop_outcome(text, fmt.stop_strings, fmt.turn_suffix, cont.hit_cap)
    return {
        "continuation": text, "reply": shown, "n_tokens": cont.n_tokens, "hit_cap": cont.hit_cap,
        "stop": outcome, "impersonation_offset": offset,
        "impersonation": offset is not None,
        "other_character": bool(detectors.speaker_headers(text, others, fmt)),
        "run_on": outcome == "run_on", "natural_stop": outcome == "natural_stop", "truncated": outcome == "truncated",
        "impersonation_shown": detectors.impersonation_offset(shown, case.user_character, fmt) is not None,
        "other_character_shown": bool(detectors.speaker_headers(shown, others, fmt)),
        "truncated_shown": not (fired or cont.stopped_by_eos),
        "template_leak": em.template_leaks(shown),
        "ooc": bool(split_ooc(shown).remarks),
        "words": len(em.words(shown)),
        "copy": em.max_overlap_with_history(shown, list(case.history)),
    }


def _text_metrics(texts: list[str], histories: list[list[str]]) -> dict:
    return {"distinct1": em.distinct_n(texts, 1), "distinct2": em.distinct_n(texts, 2),
            "repeated_2grams": em.repeated_ngram_rate(texts, 2), "repeated_4grams": em.repeated_ngram_rate(texts, 4),
            "history_overlap": em.mean(em.max_overlap_with_history(t, h) for t, h in zip(texts, histories)),
            "ooc": em.ooc_rate(texts) if texts else float("nan")}


def summarize_generations(records: list[dict], n_samples: int) -> dict:
    """Rates and text metrics per decoding (greedy = draw 0, sampled = draws 1..K) and arm, the human replies
    of the same contexts beside them, and McNemar's exact test for every binary outcome (pairs: the same
    context and draw in both arms, the same seed)."""
    human = [r["human"] for r in records]
    histories = [r["history"] for r in records]
    out = {"human": {**_text_metrics(human, histories), "lengths": em.word_lengths(human),
                     "ooc_same_threads": em.ooc_rate([t for r in records for t in r["thread_turns"]])
                     if records else float("nan")}}
    # each human reply counted once per context; the thread-level rate covers every turn of the same threads
    decodings = {"greedy": [0], "sampled": list(range(1, n_samples + 1))}
    for decoding, draws in decodings.items():
        if not draws or not records:
            continue
        items = [(r, d) for r in records for d in draws]
        section = {"n": len(items), "rates": {}}
        for key, _ in BINARY:
            section["rates"][key] = em.paired_rates([r["base"][d][key] for r, d in items],
                                                    [r["adapter"][d][key] for r, d in items])
        for arm in ("base", "adapter"):
            texts = [r[arm][d]["reply"] for r, d in items]
            lengths = [r[arm][d]["words"] for r, d in items]
            offsets = [r[arm][d]["impersonation_offset"] for r, d in items
                       if r[arm][d]["impersonation_offset"] is not None]
            section[arm] = {**_text_metrics(texts, [r["history"] for r, _ in items]),
                            "length": em.length_summary(texts, human),
                            "length_ks_vs_human": em.ks_distance(lengths, out["human"]["lengths"]),
                            "lengths": lengths,
                            "impersonation_offset_median": float(sorted(offsets)[len(offsets) // 2])
                            if offsets else float("nan")}
        out[decoding] = section
    return out


def _generation_section(model, tokenizer, samples: list[dict], fmt, config: EvalConfig,
                        precision: str, cuda: bool, log) -> tuple[dict, list[dict]]:
    n_contexts = config.max_generations or (64 if cuda else 8)
    batch = config.generation_batch_size or (16 if cuda else 4)
    sampling = recommended_sampling(fmt)
    temperature = config.temperature if config.temperature >= 0 else sampling["temperature"]
    min_p = config.min_p if config.min_p >= 0 else sampling["min_p"]
    max_new = config.max_new_tokens or (512 if cuda else 40)
    k = max(0, config.samples_per_context)
    cases = generation.generation_cases(samples, fmt, tokenizer, config.max_prompt_tokens, n_contexts)
    seeds = [config.seed * 1_000_003 + i for i in range(len(cases))]
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    generation_eos = generation_eos if isinstance(generation_eos, list) else [generation_eos]
    eos_ids = sorted({i for i in (tokenizer.eos_token_id, *generation_eos) if isinstance(i, int)})
    log(f"generating from {len(cases)} contexts: greedy + {k} samples (temperature {temperature}, min_p {min_p}, "
        f"seed {config.seed}) x {max_new} tokens per arm, batches of {batch}")
    outputs = {}
    prompts = [c.prompt for c in cases]
    # On a CPU, decoding runs in fp32: autocast re-casts every frozen weight to bf16 at each new token, which
    # makes one-token steps slower than fp32 (the teacher-forced passes amortize it over whole rows).
    gen_precision = precision if cuda else "fp32"
    for arm in ("adapter", "base"):
        with autocast(gen_precision):
            if arm == "base":
                with model.disable_adapter():
                    outputs[arm] = generation.generate_batch(model, tokenizer, prompts, max_new_tokens=max_new,
                                                     n_samples=k, temperature=temperature, min_p=min_p, seeds=seeds,
                                                     batch_size=batch, eos_token_ids=eos_ids)
            else:
                outputs[arm] = generation.generate_batch(model, tokenizer, prompts, max_new_tokens=max_new,
                                                 n_samples=k, temperature=temperature, min_p=min_p, seeds=seeds,
                                                 batch_size=batch, eos_token_ids=eos_ids)
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
                    "settings": {"temperature": temperature, "min_p": min_p, "seed": config.seed,
                                 "max_new_tokens": max_new, "max_prompt_tokens": config.max_prompt_tokens,
                                 "batch_size": batch, "precision": gen_precision, "stop_markers": generation.stop_markers(fmt, tokenizer.eos_token),
                                 "eos_token_ids": eos_ids}})
    for r in records:
        del r["history"], r["thread_turns"]
    return summary, records


def _worst_first(records: list[dict]) -> list[dict]:
    """Contexts ordered by how many failures their continuations show (adapter first, then base), stable."""
    failures = ("impersonation", "impersonation_shown", "template_leak", "run_on", "ooc", "other_character_shown")

    def badness(r):
        return (sum(c[f] for c in r["adapter"] for f in failures), sum(c[f] for c in r["base"] for f in failures))

    return sorted(records, key=badness, reverse=True)


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
    adapter = upstream(context, "lora_checkpoint")
    data = upstream(context, "tokenized_parquet")
    base = upstream(context, "base_model")
    base_event = latest_materialization(context.instance, "base_model")
    base_name = str(base_event.metadata["model_name"].value) if "model_name" in base_event.metadata else base.path.name
    inputs = {"code": EVAL_CODE, "config": config.model_dump(), "lora_checkpoint": adapter.data_version,
              "tokenized_parquet": data.data_version, "base_model": base.data_version, "base_model_name": base_name}
    dumps = sorted((read_manifest(data.path) or {}).get("inputs", {}).get("augmented_prompts", {}))
    sample_sources = [upstream(context, "augmented_prompts", dump) for dump in dumps]

    def build(folder: Path) -> dict:
        import pyarrow.parquet as pq
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        training = json.loads((adapter.path / "training_config.json").read_text())
        fmt = get_format(training["format"])
        precision = resolve_precision(config.precision)
        cuda = torch.cuda.is_available()
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        torch.manual_seed(0)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32),
                                          adapter.path)
        if cuda:
            model = model.to("cuda")
        model.eval()
        rows = load_split(data.path / "tokenized.parquet", "eval")
        if not rows:
            raise dg.Failure(f"{data.path}: the eval split is empty; raise eval_fraction or min_eval_threads")
        names = set(pq.read_schema(data.path / "tokenized.parquet").names)
        extra = [c for c in ("first_turn", "last_turn", "text") if c in names]
        if extra:
            table = pq.read_table(data.path / "tokenized.parquet", columns=["split", *extra]).to_pylist()
            for row, more in zip(rows, [t for t in table if t["split"] == "eval"]):
                row.update({c: more[c] for c in extra})
        samples = read_rows(data.path / "eval_samples.parquet")

        timings = {}
        clock = __import__("time").perf_counter
        t0 = clock()
        context.log.info(f"scoring {len(rows)} eval rows with and without the adapter ({precision})")
        loss = _loss_section(model, tokenizer, rows, samples, fmt, config, precision)
        timings["losses_s"] = clock() - t0
        t0 = clock()
        context.log.info(f"ranking next speakers at up to {config.speaker_turns} model turns")
        speakers = _speaker_section(model, tokenizer, samples, fmt, config, precision)
        timings["speaker_selection_s"] = clock() - t0
        t0 = clock()
        generation, cases = _generation_section(model, tokenizer, samples, fmt, config, precision, cuda,
                                                context.log.info)
        timings["generation_s"] = clock() - t0
        context.log.info("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

        summary = {
            "format": fmt.name, "precision": precision, "device": "cuda" if cuda else "cpu",
            "base_model_path": str(base.path), "base_model_version": base.data_version,
            "adapter_path": str(adapter.path), "adapter_version": adapter.data_version,
            "eval_rows": len(rows), "eval_threads": len({r["thread_key"] for r in rows}),
            **loss, "speaker_selection": speakers, "generation": generation,
            "timings_s": {k: round(v, 1) for k, v in timings.items()},
        }
        thread_losses = list(loss["per_thread_loss"].items())
        deltas = [t["adapter"] - t["base"] for _, t in thread_losses]
        lengths = {"human": generation["human"]["lengths"]}
        for decoding in ("greedy", "sampled"):
            if decoding in generation:
                for arm in ("base", "adapter"):
                    lengths[f"{arm} {decoding}"] = generation[decoding][arm]["lengths"]
        plots = {"loss_curve": (adapter.path / "loss_curve.png").read_bytes()
                 if (adapter.path / "loss_curve.png").exists() else None,
                 "thread_losses": paired_scatter_png([t["base"] for _, t in thread_losses],
                                                     [t["adapter"] for _, t in thread_losses]),
                 "thread_deltas": thread_delta_png([k for k, _ in thread_losses], deltas,
                                                   loss["loss_delta_mean_per_thread"], loss["loss_delta_ci_low"],
                                                   loss["loss_delta_ci_high"]),
                 "role_losses": role_loss_png({r: v for r, v in loss["role_losses"].items() if v.get("tokens")}),
                 "lengths": length_distribution_png(lengths)}
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
                          lineage={"base_model_name": base_name, "base_model_version": base.data_version,
                                   "tokenized_version": data.data_version, "presets": True})
        (folder / "model_card.md").write_text(card, "utf-8")
        (adapter.path / "README.md").write_text(card, "utf-8")  # the card travels with the adapter
        shown = _worst_first(cases)[: max(0, config.report_samples)]
        report = markdown_report(summary, shown, plots)
        (folder / "report.md").write_text(report, "utf-8")
        (folder / "report.html").write_text(html_report(summary, shown, plots), "utf-8")
        (folder / "report.json").write_text(json.dumps({"summary": summary, "generations": cases}, indent=1,
                                                       ensure_ascii=False, default=float), "utf-8")
        roles = loss["role_losses"]
        g = generation
        greedy, sampled = g.get("greedy", {}), g.get("sampled", {})

        def role(name, key):
            return roles.get(name, {}).get(key, float("nan"))

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
            "report_path": dg.MetadataValue.path(str(folder / "report.md")),
            "report_html": dg.MetadataValue.path(str(folder / "report.html")),
            "model_card": dg.MetadataValue.path(str(adapter.path / "README.md")),
            "report": dg.MetadataValue.md(markdown_report(summary, shown[:3], None)),
        }

    def checks(m: dict) -> list[dg.AssetCheckResult]:
        regression = m["model_turn_loss_adapter"] - m["model_turn_loss_base"]
        return [dg.AssetCheckResult(
            check_name="adapter_not_worse_than_base", passed=bool(regression <= config.loss_tolerance),
            metadata={"loss_delta": regression, "tolerance": config.loss_tolerance})]

    built = build_or_reuse(context, lambda fp: store.dir_for("eval_report", fp), inputs, build, checks=checks,
                           content_globs=("report.json",))
    context.log.info(f"eval report: {built.path / 'report.md'}")
    return built.result()
