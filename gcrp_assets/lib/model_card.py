"""The model card (README.md beside the adapter), written from lineage, dataset statistics and the eval.

Laid out like the two reference cards: what the model is, the prompt format with an example, stop strings,
recommended sampling, dataset information, training hyperparameters, evaluation, and known issues as measured.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

from gcrp_assets.lib.formats import ChatFormat, render
from gcrp_assets.lib.tables import md_table

# The reference cards' advice: Party (Nemo) lower temperature with min_p ≥ 0.1; Herrsimian 1.0 with min_p 0.05.
SAMPLING = {
    "inst": {"temperature": 0.8, "min_p": 0.1},
    "chatml": {"temperature": 0.8, "min_p": 0.1},
    "herrsimian": {"temperature": 1.0, "min_p": 0.05},
}


def dataset_statistics(samples: list[dict]) -> dict:
    characters = [len({t["name"] for t in s["turns"] if t["name"]}) for s in samples]
    turns = [len(s["turns"]) for s in samples]
    return {
        "samples": len(samples),
        "threads": len({s["thread_key"] for s in samples}),
        "dumps": sorted({s["dump"] for s in samples}),
        "characters_per_entry": (min(characters), max(characters)) if characters else (0, 0),
        "characters_histogram": sorted(Counter(characters).items()),
        "min_turns": min(turns) if turns else 0,
        "median_turns": statistics.median(turns) if turns else 0,
    }


def _num(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def model_card(*, fmt: ChatFormat, bos_token: str | None, example: dict, stats: dict, training: dict,
               lineage: dict, summary: dict) -> str:
    hp = training["hyperparameters"]
    example_text = render({**example, "turns": example["turns"][:3]}, fmt, bos_token).text
    sampling = SAMPLING.get(fmt.name, {"temperature": 0.8, "min_p": 0.1})
    g = summary["generation"]
    sp = summary["speaker_selection"]
    issues = [
        f"- Impersonation (greedy, stop strings off, n={g['n']}): "
        f"{_num(g['impersonation']['adapter_rate'])} of replies (base {_num(g['impersonation']['base_rate'])}).",
        f"- Picks the user's character as next speaker: {_num(sp['adapter']['user_pick_rate'])} "
        f"(base {_num(sp['base']['user_pick_rate'])}).",
        f"- Natural stop rate: {_num(g['natural_stop_adapter'])}; run-on rate: {_num(g['run_on_adapter'])}; "
        f"template-marker leaks: {_num(g['template_leak_adapter'])}.",
        f"- OOC rate: {_num(g['ooc_adapter'])} (human replies in the same threads: {_num(g['ooc_human'])}).",
        f"- Copies of earlier turns (4-gram overlap): {_num(g['history_overlap_adapter'])} "
        f"(human {_num(g['history_overlap_human'])}).",
    ]
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {lineage['base_model_path']}",
        "tags: [roleplay, group-chat, lora, gcrp_assets]",
        "---",
        "",
        "# Group-chat roleplay LoRA",
        "",
        "A LoRA adapter for multi-character (group) roleplay, trained by the gcrp_assets pipeline on human forum "
        "roleplay threads. Turns need not alternate: several characters may speak in a row.",
        "",
        "## Prompt format",
        "",
        f"Format `{fmt.name}`" + (" (BOS required at the start)" if fmt.add_bos else "") + ". Example:",
        "",
        "```text",
        example_text,
        "```",
        "",
        "The tokenizer saved with this adapter carries a chat template that reproduces this format exactly "
        "(`apply_chat_template` with `role` and `name` per message).",
        "",
        "**Stop strings**: " + ", ".join(f"`{s!r}`" for s in fmt.stop_strings),
        "",
        f"**Recommended sampling**: temperature {sampling['temperature']}, min_p {sampling['min_p']}; no "
        "repetition/frequency/presence penalties (they penalise the turn markers).",
        "",
        "## Dataset",
        "",
        f"- {stats['samples']} samples from {stats['threads']} forum threads; sources (dumps): "
        f"{', '.join(stats['dumps'])}",
        f"- characters per entry: {stats['characters_per_entry'][0]}–{stats['characters_per_entry'][1]}; "
        f"minimum turns per entry: {stats['min_turns']} (median {stats['median_turns']})",
        "- conversations kept as written by their human authors; the system prompt is built from the "
        "characters' sheets rewritten into one uniform template; forum handles removed",
        f"- training set data version `{lineage['tokenized_version']}`; base model `{lineage['base_model_version']}`",
        "",
        "## Training",
        "",
        md_table(sorted((k, str(v)) for k, v in hp.items()), ["hyperparameter", "value"]),
        "",
        f"Precision {training.get('precision')}, {training.get('steps')} optimizer steps.",
        "",
        "## Evaluation (held-out threads)",
        "",
        md_table([
            ("model-turn loss", _num(summary["model_turn_loss_base"]), _num(summary["model_turn_loss_adapter"]),
             f"[{_num(summary['loss_delta_ci_low'])}, {_num(summary['loss_delta_ci_high'])}]"),
            ("bits per byte", _num(summary["bits_per_byte_base"]), _num(summary["bits_per_byte_adapter"]), ""),
            ("speaker selection accuracy", _num(sp["base"]["accuracy"]), _num(sp["adapter"]["accuracy"]), ""),
        ], ["metric", "base", "adapter", "95% CI of the difference"]),
        "",
        "## Known issues (measured)",
        "",
        *issues,
        "",
        "## SillyTavern",
        "",
        "`sillytavern-instruct.json` and `sillytavern-context.json` beside this card hold the matching instruct "
        "and context presets." if lineage.get("presets") else "No SillyTavern presets were exported for this format.",
    ]
    return "\n".join(lines) + "\n"
