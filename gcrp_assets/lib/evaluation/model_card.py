"""The model card (model_card.md in the eval report's folder, beside the presets), written from lineage
(base model, training set and adapter data versions), dataset statistics and the eval.

Laid out like the two reference cards: what the model is, the prompt format with an example, stop strings,
recommended sampling, dataset information, training hyperparameters, evaluation, and known issues as measured.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import TYPE_CHECKING

from gcrp_assets.lib.formats.chat_format import ChatFormat, render
from gcrp_assets.lib.evaluation.report import caveats
from gcrp_assets.lib.tables import md_table

if TYPE_CHECKING:  # imported where used: the presets module is only needed when a card is written
    from gcrp_assets.lib.formats.sillytavern_presets import PresetFiles

# The hyperparameters a card lists, in this order (run settings such as launcher, ports and logging are left
# out; quantization and DeepSpeed rows only when used).
CARD_HYPERPARAMETERS = ("recipe", "rank", "alpha", "dropout", "use_rslora", "target_modules", "learning_rate",
                        "lr_scheduler", "warmup_steps", "wsd_stable_epochs", "wsd_decay_epochs", "min_lr_ratio",
                        "weight_decay", "optim", "num_epochs", "max_steps", "batch_size", "gradient_accumulation_steps",
                        "global_batch_size", "max_length", "packing", "load_in_8bit", "load_in_4bit",
                        "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "zero_stage", "offload_optimizer",
                        "gradient_checkpointing", "seed")


def card_hyperparameters(hp: dict) -> list[tuple[str, str]]:
    """The training settings worth publishing: those that shape the adapter, without unused options."""
    skip = set()
    if hp.get("lr_scheduler") != "warmup_stable_decay":
        skip |= {"wsd_stable_epochs", "wsd_decay_epochs", "min_lr_ratio"}
    if not hp.get("load_in_4bit"):
        skip |= {"load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant"}
    if not hp.get("load_in_8bit"):
        skip.add("load_in_8bit")
    if not hp.get("zero_stage"):
        skip |= {"zero_stage", "offload_optimizer"}
    if not hp.get("global_batch_size"):
        skip.add("global_batch_size")
    rows = []
    for key in CARD_HYPERPARAMETERS:
        if key in hp and key not in skip:
            value = hp[key]
            rows.append((key, ", ".join(value) if isinstance(value, (list, tuple)) else str(value)))
    return rows


# The reference cards' advice: Party (Nemo) lower temperature with min_p ≥ 0.1; Herrsimian 1.0 with min_p 0.05.
SAMPLING = {
    "inst": {"temperature": 0.8, "min_p": 0.1},
    "chatml": {"temperature": 0.8, "min_p": 0.1},
    "herrsimian": {"temperature": 1.0, "min_p": 0.05},
}


def recommended_sampling(fmt: ChatFormat) -> dict:
    """The reference cards' sampling settings for a format (temperature, min_p); other formats: 0.8 / 0.1."""
    return dict(SAMPLING.get(fmt.name, {"temperature": 0.8, "min_p": 0.1}))


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


def _rate(section: dict, key: str, arm: str) -> float:
    return section.get("rates", {}).get(key, {}).get(f"{arm}_rate", float("nan"))


def _p(section: dict, key: str) -> str:
    r = section.get("rates", {}).get(key)
    return f"McNemar p={_num(r['p'])}" if r else "no test"


def known_issues(summary: dict) -> list[str]:
    """The card's "known issues" as measured on the held-out threads: each line is a number from the eval."""
    g = summary["generation"]
    sp = summary["speaker_selection"]
    roles = summary.get("role_losses", {})
    st = g.get("settings", {})
    out = []
    for decoding, label in (("greedy", "greedy"), ("sampled", f"sampled at temperature {st.get('temperature')}, "
                                                             f"min_p {st.get('min_p')}")):
        section = g.get(decoding)
        if not section:
            continue
        out.append(
            f"- Impersonation ({label}, stop strings off, n={section['n']}): "
            f"{_num(_rate(section, 'impersonation', 'adapter'))} of continuations write a turn for the user's "
            f"character (base {_num(_rate(section, 'impersonation', 'base'))}; {_p(section, 'impersonation')}); "
            f"with the stop strings on, {_num(_rate(section, 'impersonation_shown', 'adapter'))} still show one inside "
            "the reply. Set the format's stop strings, and in groups the other characters' names.")
        out.append(
            f"- Stopping ({label}): natural end of turn {_num(_rate(section, 'natural_stop', 'adapter'))}, run-on past "
            f"the turn {_num(_rate(section, 'run_on', 'adapter'))}, cut at the token cap "
            f"{_num(_rate(section, 'truncated', 'adapter'))} (base {_num(_rate(section, 'natural_stop', 'base'))} / "
            f"{_num(_rate(section, 'run_on', 'base'))} / {_num(_rate(section, 'truncated', 'base'))}); template-marker "
            f"leaks {_num(_rate(section, 'template_leak', 'adapter'))}.")
    main = g.get("sampled") or g.get("greedy")
    if main:
        human = g.get("human", {})
        a = main["adapter"]
        out.append(
            f"- OOC breaks: {_num(_rate(main, 'ooc', 'adapter'))} of shown replies (base {_num(_rate(main, 'ooc', 'base'))};"
            f" human replies in the same slots {_num(human.get('ooc'))}, all turns of the same threads "
            f"{_num(human.get('ooc_same_threads'))}).")
        out.append(
            f"- Repetition: distinct-1/2 {_num(a['distinct1'])}/{_num(a['distinct2'])} (human {_num(human.get('distinct1'))}"
            f"/{_num(human.get('distinct2'))}); repeated 4-grams within a reply {_num(a['repeated_4grams'])}; 4-gram "
            f"copy of an earlier turn {_num(a['history_overlap'])} (human {_num(human.get('history_overlap'))}).")
        out.append(
            f"- Reply length: median {_num(a['length']['model_median'])} words vs {_num(a['length']['human_median'])} "
            f"for the human replies (KS distance {_num(a['length_ks_vs_human'])}).")
    user = roles.get("user_text", {})
    if user.get("tokens"):
        out.append(
            f"- User-turn loss {_num(user['loss_base'])} → {_num(user['loss_adapter'])} nats/token (95% cluster-bootstrap CI "
            f"of the change [{_num(user['delta_ci_low'])}, {_num(user['delta_ci_high'])}]; model-turn text "
            f"{_num(roles.get('model_text', {}).get('loss_base'))} → {_num(roles.get('model_text', {}).get('loss_adapter'))})"
            ": a user-turn loss falling as fast as the model-turn loss means the adapter learns to write the user's "
            "turns too (impersonation risk).")
    end = roles.get("model_end", {})
    if end.get("tokens"):
        out.append(f"- End-of-turn loss {_num(end['loss_base'])} → {_num(end['loss_adapter'])} nats/token "
                   f"({end['tokens']} tokens).")
    out.append(f"- Picks the user's character as next speaker: {_num(sp['adapter']['user_pick_rate'])} "
               f"(base {_num(sp['base']['user_pick_rate'])}, n={sp['adapter']['n']}).")
    out += [f"- {c}" for c in caveats(g)]
    out.append("- Small evaluation: rates come from few held-out contexts; read them with their p-values and CIs.")
    return out


def model_card(*, fmt: ChatFormat, bos_token: str | None, example: dict, stats: dict, training: dict,
               lineage: dict, summary: dict) -> str:
    hp = training["hyperparameters"]
    example_text = render({**example, "turns": example["turns"][:3]}, fmt, bos_token).text
    sampling = SAMPLING.get(fmt.name, {"temperature": 0.8, "min_p": 0.1})
    sp = summary["speaker_selection"]
    issues = known_issues(summary)
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {lineage['base_model_name']}",
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
        f"- training set data version `{lineage['tokenized_version']}`; base model {lineage['base_model_name']} "
        f"(data version `{lineage['base_model_version']}`)"
        + (f"; adapter `{lineage['adapter']}` (data version `{lineage['adapter_version']}`)"
           if lineage.get("adapter_version") else ""),
        "",
        "## Training",
        "",
        md_table(card_hyperparameters(hp), ["hyperparameter", "value"]),
        "",
        f"Precision {training.get('precision')}, {training.get('steps')} optimizer steps"
        + (f", quantization {training['quantization']}" if training.get("quantization", "none") != "none" else "")
        + ".",
        "",
        "## Evaluation (held-out threads)",
        "",
        md_table([
            ("model-turn loss", _num(summary["model_turn_loss_base"]), _num(summary["model_turn_loss_adapter"]),
             f"[{_num(summary['loss_delta_ci_low'])}, {_num(summary['loss_delta_ci_high'])}]"),
            ("bits per byte", _num(summary["bits_per_byte_base"]), _num(summary["bits_per_byte_adapter"]), ""),
            *[(label, _num(r["loss_base"]), _num(r["loss_adapter"]),
               f"[{_num(r['delta_ci_low'])}, {_num(r['delta_ci_high'])}]")
              for label, r in (("user-turn loss", summary.get("role_losses", {}).get("user_text", {})),
                               ("speaker-name loss", summary.get("role_losses", {}).get("model_name", {})),
                               ("end-of-turn loss", summary.get("role_losses", {}).get("model_end", {})))
              if r.get("tokens")],
            *[(label, _num(q["base"]), _num(q["adapter"]), f"[{_num(q['ci_low'])}, {_num(q['ci_high'])}]")
              for label, q in (("speaker selection accuracy (every held-out model turn)",
                                summary.get("failure_modes", {}).get("speaker_accuracy")),
                               ("stop propensity at the gold end of turn",
                                summary.get("failure_modes", {}).get("stop_probability")),
                               ("impersonation propensity (user's header vs gold next)",
                                summary.get("failure_modes", {}).get("impersonation_share")))
              if q and q.get("n")],
            *([] if summary.get("failure_modes") else
              [("speaker selection accuracy", _num(sp["base"]["accuracy"]), _num(sp["adapter"]["accuracy"]), "")]),
        ], ["metric", "base", "adapter", "95% CI of the difference"]),
        "",
        "## Known issues (measured)",
        "",
        *issues,
        "",
        *sillytavern_section(fmt, lineage.get("presets")),
    ]
    return "\n".join(lines) + "\n"


def sillytavern_section(fmt: ChatFormat, presets: "PresetFiles | None" = None) -> list[str]:
    """The card's SillyTavern section: how to load the presets in three steps, or why there are none, and
    what SillyTavern does differently. Computed from the format (and the files `write_presets` wrote, when
    given), never assumed."""
    from gcrp_assets.lib.formats.sillytavern_presets import MASTER, PresetFiles, build_presets

    if not isinstance(presets, PresetFiles):
        presets = PresetFiles({}, build_presets(fmt, sampling=recommended_sampling(fmt)))
    built = presets.presets
    lines = ["## SillyTavern", ""]
    if not built.written:
        return lines + ["No SillyTavern presets were written: a broken preset would build another prompt than "
                        "training's.", "", *[f"- {note}" for note in built.cannot_express]]
    name, sampling = built.name, recommended_sampling(fmt)
    files = sorted(presets.paths) or [MASTER]
    lines += [
        f"Presets that rebuild the training prompt are beside this card ({', '.join(f'`{f}`' for f in files)}). "
        "Three steps:",
        "",
        f"1. Advanced Formatting → **Master Import** → `{MASTER}`: the instruct template, context template, "
        f"system prompt and text-completion preset, all named `{name}`.",
        f"2. Select the Context Template, Instruct Template (Instruct Mode on; it also selects itself when the "
        f"backend's model name contains `{name}`) and System Prompt `{name}`, and the `{name}` preset under AI "
        f"Response Configuration (temperature {sampling['temperature']}, min_p {sampling['min_p']}).",
    ]
    if built.roster is not None:
        lines.append(
            "3. Write the characters as training saw them: each card's description is its uniform sheet (no "
            "greeting, example messages or card system prompt), your persona's description is your character's "
            "uniform sheet, and the group uses \"Join character cards\" with Join Prefix "
            f"`{built.roster.join_prefix}` and Join Suffix `{built.roster.join_suffix}`, members in order of "
            "appearance. `python -m gcrp_assets.cli export-sillytavern` writes threads as groups set up this way.")
    else:
        lines.append("3. Paste the training system prompt into SillyTavern's System Prompt by hand (see below).")
    lines += ["", "What SillyTavern's prompt does differently from training:", "",
              *[f"- {note}" for note in built.differences]]
    return lines

