"""The eval report as Markdown and as self-contained HTML, from one dict of numbers and the generations."""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from gcrp_assets.lib.tables import clip, md_table


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ci(low: float, high: float) -> str:
    return "–" if math.isnan(low) or math.isnan(high) else f"[{low:.4g}, {high:.4g}]"


def headline_rows(s: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, base, adapter, human, adapter - base, 95% CI or p) rows of the headline table."""
    g = s["generation"]
    sp = s["speaker_selection"]
    rows = [
        ("model-turn loss (nats/token)", s["model_turn_loss_base"], s["model_turn_loss_adapter"], None,
         s["model_turn_loss_adapter"] - s["model_turn_loss_base"],
         "CI " + _ci(s["loss_delta_ci_low"], s["loss_delta_ci_high"])),
        ("model-turn perplexity", s["perplexity_base"], s["perplexity_adapter"], None,
         s["perplexity_adapter"] - s["perplexity_base"], ""),
        ("bits per byte (model turns)", s["bits_per_byte_base"], s["bits_per_byte_adapter"], None,
         s["bits_per_byte_adapter"] - s["bits_per_byte_base"], ""),
        ("speaker selection accuracy", sp["base"]["accuracy"], sp["adapter"]["accuracy"], None,
         sp["adapter"]["accuracy"] - sp["base"]["accuracy"], f"n={sp['adapter']['n']}"),
        ("speaker selection MRR", sp["base"]["mrr"], sp["adapter"]["mrr"], None,
         sp["adapter"]["mrr"] - sp["base"]["mrr"], ""),
        ("picks the user's character", sp["base"]["user_pick_rate"], sp["adapter"]["user_pick_rate"], None,
         sp["adapter"]["user_pick_rate"] - sp["base"]["user_pick_rate"], ""),
        ("impersonation rate", g["impersonation"]["base_rate"], g["impersonation"]["adapter_rate"], None,
         g["impersonation"]["delta"], f"McNemar p={_fmt(g['impersonation']['p'])}"),
        ("natural stop rate", g["natural_stop_base"], g["natural_stop_adapter"], None,
         _diff(g["natural_stop_adapter"], g["natural_stop_base"]), ""),
        ("run-on rate", g["run_on_base"], g["run_on_adapter"], None, _diff(g["run_on_adapter"], g["run_on_base"]), ""),
        ("template-marker leak rate", g["template_leak_base"], g["template_leak_adapter"], None,
         _diff(g["template_leak_adapter"], g["template_leak_base"]), ""),
        ("OOC rate", g["ooc_base"], g["ooc_adapter"], g["ooc_human"], _diff(g["ooc_adapter"], g["ooc_base"]), ""),
        ("distinct-2", g["distinct2_base"], g["distinct2_adapter"], g["distinct2_human"],
         _diff(g["distinct2_adapter"], g["distinct2_base"]), ""),
        ("copy of earlier turns (4-gram overlap)", g["history_overlap_base"], g["history_overlap_adapter"],
         g["history_overlap_human"], _diff(g["history_overlap_adapter"], g["history_overlap_base"]), ""),
        ("median reply words", g["length_base"]["model_median"], g["length_adapter"]["model_median"],
         g["length_adapter"]["human_median"], _diff(g["length_adapter"]["model_median"],
                                                    g["length_base"]["model_median"]), ""),
    ]
    return [(m, _fmt(b), _fmt(a), _fmt(h), _fmt(d), extra) for m, b, a, h, d, extra in rows]


def _diff(a: float, b: float) -> float:
    return a - b if not (math.isnan(a) or math.isnan(b)) else float("nan")


HEADERS = ["metric", "base", "adapter", "human", "adapter − base", "uncertainty"]
NOTES = (
    "Loss: summed negative log-likelihood of the model-turn tokens (the training labels) over their count, on "
    "the whole eval split; the base arm is the same model with the adapter disabled. The CI is a 95% paired "
    "bootstrap over held-out threads of the per-thread loss difference. Speaker selection scores every roster "
    "name as the next speaker at gold model turns. Generations are greedy with stop strings off (so run-ons and "
    "impersonation are visible); rates compare the two arms on the same contexts (McNemar exact test)."
)


def markdown_report(s: dict, cases: list[dict]) -> str:
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
        md_table(headline_rows(s), HEADERS),
        "",
        NOTES,
        "",
        "## Speaker-selection baselines",
        "",
        md_table([(name, _fmt(v["accuracy"]), _fmt(v["mrr"])) for name, v in s["speaker_selection"]["baselines"].items()],
                 ["baseline", "accuracy", "MRR"]),
        "",
        "## Generations (greedy, stop strings off)",
    ]
    for i, case in enumerate(cases, 1):
        flags = lambda arm: ", ".join(f for f, on in (("impersonates", case[f"{arm}_impersonates"]),
                                                      (case[f"{arm}_stop"], True)) if on)
        lines += [
            "",
            f"### {i}. `{case['thread_key']}`: {case['speaker']} replies (user plays {case['user_character']})",
            "",
            f"**Context (end)**: {clip(case['context_tail'], 400)}",
            "",
            f"**Human**: {clip(case['human'], 400)}",
            "",
            f"**Base** ({flags('base')}): {clip(case['base'], 400)}",
            "",
            f"**Adapter** ({flags('adapter')}): {clip(case['adapter'], 400)}",
        ]
    return "\n".join(lines) + "\n"


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(rows, headers) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(s: dict, cases: list[dict], plots: dict[str, bytes | None]) -> str:
    """One file, no external resources: plots are embedded as data URIs."""
    samples = []
    for case in cases:
        def cell(arm):
            bad = case[f"{arm}_impersonates"] or case[f"{arm}_stop"] != "natural_stop"
            return f'<td class="{"bad" if bad else ""}">{html.escape(case[arm])}<br><small>{case[f"{arm}_stop"]}' \
                   f'{", impersonates" if case[f"{arm}_impersonates"] else ""}</small></td>'
        samples.append(f"<tr><td>{html.escape(case['thread_key'])}<br><small>{html.escape(case['speaker'])} "
                       f"replies; user plays {html.escape(case['user_character'])}</small><br>"
                       f"<small>…{html.escape(case['context_tail'][-300:])}</small></td>"
                       f"<td>{html.escape(case['human'])}</td>{cell('base')}{cell('adapter')}</tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Eval report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}td.bad{{background:#fde2e2}}
small{{color:#666}}</style></head><body>
<h1>Eval report</h1>
<p>Base model <code>{html.escape(s['base_model_path'])}</code>, adapter <code>{html.escape(s['adapter_path'])}</code>;
{s['eval_rows']} eval rows from {s['eval_threads']} held-out threads; format <code>{s['format']}</code>;
precision {s['precision']}.</p>
<h2>Headline</h2>{_table(headline_rows(s), HEADERS)}<p>{html.escape(NOTES)}</p>
<h2>Curves</h2>{_img(plots.get('loss_curve'), 'training loss curve')} {_img(plots.get('thread_losses'), 'per-thread loss')}
<h2>Side by side</h2><table><thead><tr><th>context</th><th>human</th><th>base</th><th>adapter</th></tr></thead>
<tbody>{''.join(samples)}</tbody></table>
</body></html>
"""
