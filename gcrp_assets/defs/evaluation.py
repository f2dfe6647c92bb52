"""eval_report: base model vs base + adapter on the held-out threads."""


import json
from pathlib import Path

import dagster as dg

from gcrp_assets.defs.artifacts import build_or_reuse, code_version, upstream
from gcrp_assets.defs.automation import follow_new_checkpoint
from gcrp_assets.defs.configs import EvalConfig
from gcrp_assets.defs.resources import ArtifactStore
from gcrp_assets.lib import evaluation as ev
from gcrp_assets.lib.formats import get_format
from gcrp_assets.lib.parquet import read_rows
from gcrp_assets.lib.precision import autocast, resolve_precision
from gcrp_assets.lib.tables import clip, md_table
from gcrp_assets.lib.training_data import load_split

EVAL_CODE = code_version("lib/evaluation.py", "lib/formats.py", "lib/training_data.py", "lib/precision.py",
                         "defs/evaluation.py")


def _report_markdown(summary: dict, cases: list[dict]) -> str:
    s = summary
    lines = [
        "# Eval report",
        "",
        f"- base model: `{s['base_model_path']}` (data version `{s['base_model_version']}`)",
        f"- adapter: `{s['adapter_path']}` (data version `{s['adapter_version']}`)",
        f"- eval split: {s['eval_rows']} rows from {s['eval_threads']} held-out threads, "
        f"{s['eval_trained_tokens']} model-turn tokens; format `{s['format']}`; precision {s['precision']}",
        "",
        "## Headline",
        "",
        md_table([
            ("model-turn loss (nats/token, token-weighted)", s["model_turn_loss_base"], s["model_turn_loss_adapter"],
             s["model_turn_loss_adapter"] - s["model_turn_loss_base"]),
            ("model-turn perplexity", s["perplexity_base"], s["perplexity_adapter"],
             s["perplexity_adapter"] - s["perplexity_base"]),
            (f"impersonation rate (greedy, n={s['generations']})", s["impersonation_rate_base"],
             s["impersonation_rate_adapter"], s["impersonation_rate_adapter"] - s["impersonation_rate_base"]),
        ], ["metric", "base", "adapter", "adapter - base"]),
        "",
        "Loss is the summed negative log-likelihood of the trained (model-turn) tokens divided by their count, "
        "over the whole eval split; the base arm is the same model with the adapter disabled. Impersonation: the "
        "greedy reply writes a line as the user's character, or the continuation opens the user's next turn.",
        "",
        "## Generations (greedy)",
    ]
    for i, case in enumerate(cases, 1):
        lines += [
            "",
            f"### {i}. `{case['thread_key']}`: {case['speaker']} replies (user plays {case['user_character']})",
            "",
            f"**Context (end)**: {clip(case['context_tail'], 400)}",
            "",
            f"**Human**: {clip(case['human'], 400)}",
            "",
            f"**Base**{' (impersonates)' if case['base_impersonates'] else ''}: {clip(case['base'], 400)}",
            "",
            f"**Adapter**{' (impersonates)' if case['adapter_impersonates'] else ''}: {clip(case['adapter'], 400)}",
        ]
    return "\n".join(lines) + "\n"


@dg.asset(group_name="evaluation", kinds={"pytorch"}, code_version=EVAL_CODE,
          deps=["lora_checkpoint", "tokenized_parquet", "base_model"],
          automation_condition=follow_new_checkpoint())
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, store: ArtifactStore) -> dg.MaterializeResult:
    """Held-out model-turn loss and perplexity for the base model and base + adapter, plus greedy generations
    with the share that impersonate the user's character; a Markdown report and a JSON of every number."""
    adapter = upstream(context, "lora_checkpoint")
    data = upstream(context, "tokenized_parquet")
    base = upstream(context, "base_model")
    inputs = {"code": EVAL_CODE, "config": config.model_dump(), "lora_checkpoint": adapter.data_version,
              "tokenized_parquet": data.data_version, "base_model": base.data_version}

    def build(folder: Path) -> dict:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        training = json.loads((adapter.path / "training_config.json").read_text())
        fmt = get_format(training["format"])
        tokenizer = AutoTokenizer.from_pretrained(base.path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        torch.manual_seed(0)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32),
                                          adapter.path)
        model.eval()

        precision = resolve_precision(config.precision)
        rows = load_split(data.path / "tokenized.parquet", "eval")
        if not rows:
            raise dg.Failure(f"{data.path}: the eval split is empty; raise eval_fraction or min_eval_threads")
        samples = read_rows(data.path / "eval_samples.parquet")
        context.log.info(f"scoring {len(rows)} eval rows with and without the adapter ({precision})")
        with autocast(precision):
            adapter_nll = ev.per_row_nll(model, rows, pad_id, config.batch_size)
            with model.disable_adapter():
                base_nll = ev.per_row_nll(model, rows, pad_id, config.batch_size)
        base_loss, adapter_loss = ev.totals(base_nll), ev.totals(adapter_nll)

        cases = ev.generation_cases(samples, fmt, tokenizer, config.max_prompt_tokens, config.max_generations)
        context.log.info(f"generating {len(cases)} greedy replies per arm")
        case_rows = []
        for case in cases:
            with autocast(precision):
                with_adapter = ev.generate(model, tokenizer, case.prompt, config.max_new_tokens)
                with model.disable_adapter():
                    without = ev.generate(model, tokenizer, case.prompt, config.max_new_tokens)
            case_rows.append({
                "thread_key": case.thread_key, "speaker": case.speaker, "user_character": case.user_character,
                "context_tail": case.prompt[-400:], "human": case.human_reply,
                "base": ev.cut_reply(without, fmt)[0], "adapter": ev.cut_reply(with_adapter, fmt)[0],
                "base_impersonates": ev.impersonates(without, case.user_character, fmt),
                "adapter_impersonates": ev.impersonates(with_adapter, case.user_character, fmt),
                "base_raw": without, "adapter_raw": with_adapter,
            })
        n = len(case_rows)
        rate = lambda key: (sum(c[key] for c in case_rows) / n) if n else float("nan")
        summary = {
            "format": fmt.name, "precision": precision,
            "base_model_path": str(base.path), "base_model_version": base.data_version,
            "adapter_path": str(adapter.path), "adapter_version": adapter.data_version,
            "eval_rows": len(rows), "eval_threads": len({r["thread_key"] for r in samples}),
            "eval_trained_tokens": adapter_loss.tokens,
            "model_turn_loss_base": base_loss.loss, "model_turn_loss_adapter": adapter_loss.loss,
            "perplexity_base": base_loss.perplexity, "perplexity_adapter": adapter_loss.perplexity,
            "generations": n,
            "impersonation_rate_base": rate("base_impersonates"),
            "impersonation_rate_adapter": rate("adapter_impersonates"),
        }
        report = _report_markdown(summary, case_rows)
        (folder / "report.md").write_text(report, "utf-8")
        (folder / "report.json").write_text(json.dumps({"summary": summary, "generations": case_rows},
                                                       indent=1, ensure_ascii=False), "utf-8")
        return {
            **{k: summary[k] for k in ("model_turn_loss_base", "model_turn_loss_adapter", "perplexity_base",
                                       "perplexity_adapter", "impersonation_rate_base",
                                       "impersonation_rate_adapter", "eval_trained_tokens", "generations")},
            "report_path": dg.MetadataValue.path(str(folder / "report.md")),
            "report": dg.MetadataValue.md(report),
        }

    built = build_or_reuse(context, lambda fp: store.dir_for("eval_report", fp), inputs, build,
                           content_globs=("report.json",))
    context.log.info(f"eval report: {built.path / 'report.md'}")
    return built.result()

