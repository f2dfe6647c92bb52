"""The eval report as Markdown and as self-contained HTML, from one dict of numbers and the generations.

Sections: run header, headline table (base | adapter | human | adapter − base | CI or McNemar p), losses by
token role, speaker-selection baselines, generation rates per decoding with stops off and on, text metrics,
plots (embedded as data URIs in both files), and side-by-side samples (context, human, base, adapter), worst
first, with failures marked: `⟦IMPERSONATION⟧`, `⟦LEAK⟧`, `⟦OOC⟧`, and the part a front-end with stop strings
would hide after `⟦STOP⟧` (run-on) in Markdown; coloured highlights in HTML.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from gcrp_assets.lib.evaluation.metrics import TEMPLATE_MARKERS
from gcrp_assets.lib.clean.ooc import split_ooc
from gcrp_assets.lib.tables import md_table

NAN = float("nan")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ci(low: float, high: float) -> str:
    return "–" if low is None or high is None or math.isnan(low) or math.isnan(high) else f"[{low:.4g}, {high:.4g}]"


def _diff(a: float, b: float) -> float:
    return a - b if not (a is None or b is None or math.isnan(a) or math.isnan(b)) else NAN


def _events(r: dict, arm: str) -> str:
    """`0.125 (1/8)`: the rate with its events and n beside it."""
    events = r.get(f"{arm}_events")
    rate = _fmt(r[f"{arm}_rate"])
    return rate if events is None else f"{rate} ({events}/{r['n']})"


def _test(r: dict) -> str:
    """McNemar's p with the discordant pairs, or 'too few events' below the minimum of the pooled pair table."""
    if r.get("too_few_events"):
        return f"too few events ({r.get('events')} in {r['n']} pairs, both arms)"
    return f"McNemar p={_fmt(r['p'])} (b={r['b']}, c={r['c']}, n={r['n']})"


def _rate_row(label: str, section: dict, key: str, human: float | None = None, tag: str = "") -> tuple:
    r = section.get("rates", {}).get(key)
    if not r:
        return (label + tag, NAN, NAN, human, NAN, "")
    return (label + tag, _events(r, "base"), _events(r, "adapter"), human, r["delta"], _test(r))


def _tf_row(label: str, q: dict | None) -> tuple | None:
    """A teacher-forced failure-mode row: turn-weighted means, their difference, its cluster-bootstrap CI."""
    if not q or not q.get("n"):
        return None
    return (label, q["base"], q["adapter"], None, q["delta"],
            f"CI {_ci(q['ci_low'], q['ci_high'])} (n={q['n']} turns, {q['threads']} threads)")


# Teacher-forced failure modes in the headline (failure_modes.QUANTITIES keys).
FAILURE_LABELS_TF = (
    ("speaker_accuracy", "speaker selection accuracy (teacher-forced, every model turn)"),
    ("speaker_mrr", "speaker selection MRR"),
    ("speaker_picks_user", "top pick is the user's character"),
    ("stop_probability", "stop propensity: P(end of turn) at the gold end"),
    ("impersonation_share", "impersonation propensity: P(user's header) / (… + P(gold next header))"),
    ("impersonation_preferred", "user's header more likely than the gold next header"),
)


def headline_rows(s: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(metric, base, adapter, human, adapter − base, 95% CI or p) rows of the headline table. Every CI stands
    beside the point estimate it is an interval of (the token- or turn-weighted difference of the row)."""
    g = s["generation"]
    sp = s["speaker_selection"]
    roles = s.get("role_losses", {})
    failure = s.get("failure_modes", {})
    greedy, sampled = g.get("greedy", {}), g.get("sampled", {})
    human = g.get("human", {})
    rows = [
        ("model-turn loss (nats/token)", s["model_turn_loss_base"], s["model_turn_loss_adapter"], None,
         s.get("loss_delta", s["model_turn_loss_adapter"] - s["model_turn_loss_base"]),
         "CI " + _ci(s["loss_delta_ci_low"], s["loss_delta_ci_high"])),
        ("model-turn perplexity", s["perplexity_base"], s["perplexity_adapter"], None,
         s["perplexity_adapter"] - s["perplexity_base"], ""),
        ("bits per byte (model turns)", s["bits_per_byte_base"], s["bits_per_byte_adapter"], None,
         s["bits_per_byte_adapter"] - s["bits_per_byte_base"], ""),
    ]
    for role, label in (("user_text", "user-turn loss (falling = impersonation warning)"),
                        ("model_name", "speaker-name loss (model turns)"),
                        ("model_end", "end-of-turn loss (model turns)")):
        r = roles.get(role, {})
        if r.get("tokens"):
            rows.append((label, r["loss_base"], r["loss_adapter"], None, r.get("delta", r["loss_adapter"] - r["loss_base"]),
                         "CI " + _ci(r["delta_ci_low"], r["delta_ci_high"])))
    if failure:
        rows += [row for key, label in FAILURE_LABELS_TF if (row := _tf_row(label, failure.get(key)))]
    else:
        rows += [
            ("speaker selection accuracy", sp["base"]["accuracy"], sp["adapter"]["accuracy"], None,
             _diff(sp["adapter"]["accuracy"], sp["base"]["accuracy"]), f"n={sp['adapter']['n']}"),
            ("speaker selection MRR", sp["base"]["mrr"], sp["adapter"]["mrr"], None,
             _diff(sp["adapter"]["mrr"], sp["base"]["mrr"]), ""),
            ("picks the user's character", sp["base"]["user_pick_rate"], sp["adapter"]["user_pick_rate"], None,
             _diff(sp["adapter"]["user_pick_rate"], sp["base"]["user_pick_rate"]), ""),
        ]
    for section, tag in ((greedy, " [greedy]"), (sampled, " [sampled]")):
        if not section:
            continue
        rows += [
            _rate_row("impersonation rate (stops off)", section, "impersonation", tag=tag),
            _rate_row("run-on rate (stops off)", section, "run_on", tag=tag),
            _rate_row("natural stop rate (stops off)", section, "natural_stop", tag=tag),
            _rate_row("template-marker leak rate (stops on)", section, "template_leak", tag=tag),
            _rate_row("OOC rate (stops on)", section, "ooc", human.get("ooc"), tag=tag),
        ]
    if sampled or greedy:
        section, tag = (sampled, " [sampled]") if sampled else (greedy, " [greedy]")
        b, a = section["base"], section["adapter"]
        rows += [
            ("distinct-1" + tag, b["distinct1"], a["distinct1"], human.get("distinct1"),
             _diff(a["distinct1"], b["distinct1"]), ""),
            ("distinct-2" + tag, b["distinct2"], a["distinct2"], human.get("distinct2"),
             _diff(a["distinct2"], b["distinct2"]), ""),
            ("repeated 4-grams within a reply" + tag, b["repeated_4grams"], a["repeated_4grams"],
             human.get("repeated_4grams"), _diff(a["repeated_4grams"], b["repeated_4grams"]), ""),
            ("copy of earlier turns (4-gram overlap)" + tag, b["history_overlap"], a["history_overlap"],
             human.get("history_overlap"), _diff(a["history_overlap"], b["history_overlap"]), ""),
            ("median reply words" + tag, b["length"]["model_median"], a["length"]["model_median"],
             a["length"]["human_median"], _diff(a["length"]["model_median"], b["length"]["model_median"]),
             f"KS vs human: base {_fmt(b['length_ks_vs_human'])}, adapter {_fmt(a['length_ks_vs_human'])}"),
        ]
    return [(m, _fmt(b), _fmt(a), _fmt(h), _fmt(d), extra) for m, b, a, h, d, extra in rows]


def headline_table(s: dict) -> list[dict[str, str]]:
    """The headline as records `{metric, base, adapter, Δ, CI}` (4 significant digits): the UI's table."""
    return [{"metric": m, "base": b, "adapter": a, "Δ": d, "CI": extra}
            for m, b, a, _h, d, extra in headline_rows(s)]


HEADERS = ["metric", "base", "adapter", "human", "adapter − base", "uncertainty"]
NOTES = (
    "Losses: summed negative log-likelihood over the scored tokens divided by their count (token-weighted), on "
    "the whole eval split, from one forward pass per row and arm; the base arm is the same model with the "
    "adapter disabled. Model-turn loss scores the training labels; the role losses score every token by the role "
    "of the predicted token (derived from the rendered sample's spans and the tokenizer's offsets). CIs are 95% "
    "cluster bootstrap intervals of the token-weighted difference shown beside them (held-out threads resampled "
    "with replacement, the difference recomputed on each resample); the per-thread plot shows the mean of the "
    "per-thread differences with its own interval. Failure modes (teacher-forced, every held-out model turn, "
    "from the same forward passes): speaker selection ranks every roster name's `Name:` at the turn's name slot; "
    "stop propensity is P(the end-of-turn marker) at the gold end of the reply; impersonation propensity is "
    "P(a line naming the user's character) / (that + P(the gold continuation up to the next speaker's name)) at "
    "the same point; each is a mean over turns, its CI a cluster bootstrap over threads of the difference of "
    "those means. Generations: greedy and K "
    "seeded samples per context with the model cards' sampling settings, the same seeds in both arms, generated "
    "with stop strings off (run-ons and impersonation stay visible); 'stops on' is what a front-end shows with the "
    "format's stop strings, its terminator and EOS as stops, derived exactly by cutting the stops-off continuation "
    "before the first stop string (generation is causal, and each draw depends only on the tokens before it). "
    "Rates show events/n beside them and compare the arms on the same (context, draw) pairs with McNemar's exact "
    "test, or say 'too few events' when the pooled pair table (both arms) holds fewer than the configured minimum "
    "(`min_events`); draws of one context are not independent, so read p-values of sampled rates as indicative. distinct-n is corpus-level and depends on "
    "the amount of text: compare arms within a decoding."
)
ROLE_LABELS = {"model_text": "model turns: text", "model_name": "model turns: speaker name",
               "model_end": "model turns: end of turn", "user_text": "user turns: text",
               "user_name": "user turns: speaker name", "user_end": "user turns: end of turn"}
RATE_LABELS = {
    "impersonation": "impersonation: writes a turn for the user's character (stops off)",
    "other_character": "starts another character's turn (stops off)",
    "run_on": "run-on past the end of turn (stops off)",
    "natural_stop": "natural stop before the token cap (stops off)",
    "truncated": "truncated at the token cap (stops off)",
    "impersonation_shown": "impersonation inside the shown reply (stops on)",
    "other_character_shown": "another character inside the shown reply (stops on)",
    "truncated_shown": "no stop before the token cap (stops on)",
    "template_leak": "template-marker leak (stops on)",
    "ooc": "OOC remark (stops on)",
}


def role_rows(s: dict) -> list[tuple]:
    out = []
    for role, r in s.get("role_losses", {}).items():
        if not r.get("tokens"):
            out.append((ROLE_LABELS.get(role, role), 0, "–", "–", "–", "–", "–", "–"))
            continue
        out.append((ROLE_LABELS.get(role, role), r["tokens"], _fmt(r["loss_base"]), _fmt(r["loss_adapter"]),
                    _fmt(r["perplexity_base"]), _fmt(r["perplexity_adapter"]),
                    _fmt(r["loss_adapter"] - r["loss_base"]), _ci(r["delta_ci_low"], r["delta_ci_high"])))
    return out


ROLE_HEADERS = ["tokens", "n", "loss base", "loss adapter", "ppl base", "ppl adapter", "Δ loss", "95% CI (threads)"]


def rate_rows(section: dict) -> list[tuple]:
    return [(RATE_LABELS.get(k, k), _events(r, "base"), _events(r, "adapter"), _fmt(r["delta"]), r["b"], r["c"],
             "too few events" if r.get("too_few_events") else _fmt(r["p"]))
            for k, r in section.get("rates", {}).items()]


RATE_HEADERS = ["outcome", "base (events/n)", "adapter (events/n)", "adapter − base", "b (base only)",
                "c (adapter only)", "McNemar p"]


def text_rows(g: dict) -> list[tuple]:
    out = []
    h = g.get("human", {})
    keys = (("distinct1", "distinct-1"), ("distinct2", "distinct-2"), ("repeated_2grams", "repeated 2-grams"),
            ("repeated_4grams", "repeated 4-grams"), ("history_overlap", "copy of earlier turns"), ("ooc", "OOC rate"))
    for key, label in keys:
        row = [label, _fmt(h.get(key))]
        for decoding in ("greedy", "sampled"):
            for arm in ("base", "adapter"):
                row.append(_fmt(g.get(decoding, {}).get(arm, {}).get(key)))
        out.append(tuple(row))
    row = ["median words (IQR)", f"{_fmt(_median(h.get('lengths', [])))}"]
    for decoding in ("greedy", "sampled"):
        for arm in ("base", "adapter"):
            length = g.get(decoding, {}).get(arm, {}).get("length")
            row.append(f"{_fmt(length['model_median'])} ({_fmt(length['model_iqr'])})" if length else "–")
    out.append(tuple(row))
    return out


TEXT_HEADERS = ["metric", "human", "base greedy", "adapter greedy", "base sampled", "adapter sampled"]


def _median(values: list) -> float:
    if not values:
        return NAN
    v = sorted(values)
    n = len(v)
    return float(v[n // 2]) if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


# --- failures inside a continuation --------------------------------------------------------------------

FAILURE_LABELS = {"imp": "IMPERSONATION", "leak": "LEAK", "ooc": "OOC", "cut": "STOP"}


def failure_spans(c: dict) -> list[tuple[int, int, str]]:
    """Character spans of a scored continuation to highlight: `cut` (what stops on would hide), `imp` (from the
    impersonating header to the end of its line), `leak` (template markers in the shown reply), `ooc`."""
    text, reply = c["continuation"], c["reply"]
    spans = []
    if len(text) > len(reply):
        spans.append((len(reply), len(text), "cut"))
    offset = c.get("impersonation_offset")
    if offset is not None:
        end = text.find("\n", offset + 1)
        spans.append((offset, end if end > 0 else len(text), "imp"))
    for marker in TEMPLATE_MARKERS:
        start = reply.find(marker)
        while start >= 0:
            spans.append((start, start + len(marker), "leak"))
            start = reply.find(marker, start + 1)
    for remark in split_ooc(reply).remarks:
        start = reply.find(remark)
        if start >= 0:
            spans.append((start, start + len(remark), "ooc"))
    return sorted(spans)


_BADGES = (("impersonation", "impersonation"), ("other_character", "other character"), ("run_on", "run-on"),
           ("truncated", "truncated"), ("template_leak", "leak"), ("ooc", "OOC"))


def badges(c: dict) -> list[str]:
    """The failure labels shown beside one continuation, in a fixed order."""
    return [label for key, label in _BADGES if c.get(key)]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def markdown_continuation(c: dict, limit: int = 700) -> str:
    """The continuation as one Markdown-safe line with the failure markers inserted."""
    text = c["continuation"]
    inserts: dict[int, list[str]] = {}
    for start, _, kind in failure_spans(c):
        inserts.setdefault(start, []).append(f"⟦{FAILURE_LABELS[kind]}⟧")
    out, last = [], 0
    for pos in sorted(inserts):
        out.append(text[last:pos])
        out.append("**" + "".join(inserts[pos]) + "**")
        last = pos
    out.append(text[last:])
    flat = "".join(out).replace("\n", " ⏎ ").replace("|", "\\|").replace("<", "&lt;")
    return _clip(flat, limit)


def html_continuation(c: dict) -> str:
    """The continuation as HTML with the failure spans highlighted (outer spans win where they overlap)."""
    text = c["continuation"]
    spans, pos = [], 0
    for start, end, kind in failure_spans(c):
        if kind == "cut":
            continue
        if start >= pos:
            spans.append((start, end, kind))
            pos = end
    reply_end = len(c["reply"])
    out, last = [], 0
    for start, end, kind in spans + [(reply_end, reply_end, "cutmark")]:
        if start < last:
            continue
        out.append(html.escape(text[last:start]))
        if kind == "cutmark":
            out.append('<span class="cutmark" title="stop string: a front-end stops here">⟦STOP⟧</span>')
        else:
            out.append(f'<mark class="{kind}" title="{FAILURE_LABELS[kind]}">{html.escape(text[start:end])}</mark>')
        last = end
    out.append(html.escape(text[last:]))
    body = "".join(out)
    marker = '<span class="cutmark"'
    if marker in body and reply_end < len(text):
        head, tail = body.split(marker, 1)
        close = tail.index("</span>") + len("</span>")
        body = head + marker + tail[:close] + '<span class="hidden">' + tail[close:] + "</span>"
    return body


# --- Markdown --------------------------------------------------------------------------------------------

def _md_image(png: bytes | None, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})" if png else ""


PLOT_TITLES = (("loss_curve", "training and eval loss"), ("thread_deltas", "per-thread loss difference"),
               ("thread_losses", "per-thread loss, base vs adapter"),
               ("failure_modes", "failure modes at every held-out model turn (teacher-forced)"),
               ("role_losses", "loss by token role"), ("lengths", "reply length distribution"))


def _settings_line(g: dict) -> str:
    st = g.get("settings", {})
    return (f"{g.get('n', 0)} held-out contexts; greedy + {g.get('samples_per_context', 0)} samples per context and arm "
            f"(temperature {st.get('temperature')}, min_p {st.get('min_p')}, seed {st.get('seed')}), "
            f"{st.get('max_new_tokens')} new tokens, contexts ≤ {st.get('max_prompt_tokens')} tokens; stop markers "
            + ", ".join(f"`{m!r}`" for m in st.get("stop_markers", [])))


def caveats(g: dict) -> list[str]:
    """Warnings that change how the generation numbers read (computed, not boilerplate)."""
    out = []
    st = g.get("settings", {})
    for decoding in ("greedy", "sampled"):
        r = g.get(decoding, {}).get("rates", {}).get("truncated")
        if r and max(r["base_rate"], r["adapter_rate"]) > 0.5:
            human = _median(g.get("human", {}).get("lengths", []))
            out.append(f"Most {decoding} continuations hit the cap of {st.get('max_new_tokens')} new tokens (truncated: "
                       f"base {_fmt(r['base_rate'])}, adapter {_fmt(r['adapter_rate'])}; the human replies' median is "
                       f"{_fmt(human)} words): natural-stop, run-on and impersonation rates are lower bounds and the "
                       "length comparison mostly reflects the cap; raise max_new_tokens (auto: 512 with CUDA).")
            break
    return out


def markdown_report(s: dict, cases: list[dict], plots: dict[str, bytes | None] | None = None,
                    plot_keys: tuple[str, ...] | None = None) -> str:
    """The report as Markdown; `plot_keys` limits the embedded plots (the UI shows a few; the file all)."""
    g = s["generation"]
    lines = [
        "# Eval report",
        "",
        f"- base model: `{s['base_model_path']}` (data version `{s['base_model_version']}`)",
        f"- adapter: `{s['adapter_path']}` (data version `{s['adapter_version']}`)",
        f"- eval split: {s['eval_rows']} rows from {s['eval_threads']} held-out threads, "
        f"{s['eval_trained_tokens']} model-turn tokens; format `{s['format']}`; precision {s['precision']}"
        + (f"; device {s['device']}" if s.get("device") else ""),
        f"- generations: {_settings_line(g)}",
        "",
        "## Headline",
        "",
        md_table(headline_rows(s), HEADERS),
        "",
        NOTES,
        "",
        *[f"**Caveat**: {c}\n" for c in caveats(g)],
        "## Teacher-forced loss by token role",
        "",
        md_table(role_rows(s), ROLE_HEADERS) if s.get("role_losses") else "(not computed)",
        "",
        f"Rows with token roles: {s.get('role_mask_rows', '–')} (re-rendering mismatches: "
        f"{s.get('role_mask_mismatches', '–')}).",
        "",
        "## Speaker-selection baselines",
        "",
        f"On the same {s['speaker_selection'].get('adapter', {}).get('n', '–')} held-out model turns as the "
        "headline's teacher-forced speaker selection.",
        "",
        md_table([(name, _fmt(v["accuracy"]), _fmt(v["mrr"])) for name, v in s["speaker_selection"]["baselines"].items()],
                 ["baseline", "accuracy", "MRR"]),
        "",
    ]
    for decoding in ("greedy", "sampled"):
        if decoding in g:
            lines += [f"## Generation outcomes: {decoding} (n = {g[decoding]['n']} per arm)", "",
                      md_table(rate_rows(g[decoding]), RATE_HEADERS), ""]
    lines += ["## Text of the shown replies (stops on) vs the human replies", "",
              md_table(text_rows(g), TEXT_HEADERS), ""]
    if plots:
        lines += ["## Plots", ""]
        for key, title in PLOT_TITLES:
            if plots.get(key) and (plot_keys is None or key in plot_keys):
                lines += [f"**{title}**", "", _md_image(plots[key], title), ""]
    lines += ["## Generations (side by side, worst first)", "",
              "Each continuation was generated with stop strings off. Markers: ⟦IMPERSONATION⟧ where a turn for the "
              "user's character starts, ⟦LEAK⟧ a template marker, ⟦OOC⟧ an out-of-character remark, ⟦STOP⟧ where a "
              "front-end with stop strings would cut (the rest is the run-on it hides)."]
    for i, case in enumerate(cases, 1):
        lines += [
            "",
            f"### {i}. `{case['thread_key']}` turn {case.get('turn', '?')}: {case['speaker']} replies "
            f"(user plays {case['user_character']})",
            "",
            f"**Context (end)**: {_clip(case['context_tail'][-400:], 400)}".replace("\n", " ⏎ ").replace("<", "&lt;"),
            "",
            f"**Human**: {_clip(case['human'], 500)}".replace("\n", " ⏎ ").replace("<", "&lt;"),
        ]
        for d, label in ((0, "greedy"), (1, "sample 1")):
            for arm in ("base", "adapter"):
                if len(case[arm]) <= d:
                    continue
                c = case[arm][d]
                flags = badges(c)
                flag_text = " ".join(f"🚩 {f}" for f in flags) if flags else "ok"
                lines += ["", f"**{arm.capitalize()}, {label}** ({c['stop']}; {flag_text}): {markdown_continuation(c)}"]
    return "\n".join(lines) + "\n"


# --- HTML ------------------------------------------------------------------------------------------------

def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">' \
           f"<figcaption>{html.escape(alt)}</figcaption></figure>"


def _table(rows, headers) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_cell(c: dict | None) -> str:
    if c is None:
        return "<td></td>"
    flags = badges(c)
    badge = "".join(f'<span class="badge">{html.escape(f)}</span>' for f in flags)
    return (f'<td class="{"bad" if flags else ""}"><div class="gen">{html_continuation(c)}</div>'
            f"<small>{html.escape(c['stop'])}, {c['n_tokens']} tokens</small> {badge}</td>")


def html_report(s: dict, cases: list[dict], plots: dict[str, bytes | None]) -> str:
    """One file, no external resources: plots are embedded as data URIs."""
    g = s["generation"]
    samples = []
    for case in cases:
        head = (f"<td rowspan=2>{html.escape(case['thread_key'])} · turn {case.get('turn', '?')}<br><small>"
                f"{html.escape(case['speaker'])} replies; user plays {html.escape(case['user_character'])}</small>"
                f"<div class=ctx>…{html.escape(case['context_tail'][-300:])}</div></td>"
                f"<td rowspan=2><div class=gen>{html.escape(case['human'])}</div></td>")
        for d, label in ((0, "greedy"), (1, "sample 1")):
            cells = "".join(_html_cell(case[arm][d] if len(case[arm]) > d else None) for arm in ("base", "adapter"))
            samples.append(f"<tr>{head if d == 0 else ''}<td><small>{label}</small></td>{cells}</tr>")
    sections = "".join(
        f"<h2>Generation outcomes: {decoding} (n = {g[decoding]['n']} per arm)</h2>"
        f"{_table(rate_rows(g[decoding]), RATE_HEADERS)}" for decoding in ("greedy", "sampled") if decoding in g)
    figures = "".join(_img(plots.get(key), title) for key, title in PLOT_TITLES)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Eval report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}table{{border-collapse:collapse;margin:0.5em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}td.bad{{background:#fff4f4}}
small{{color:#666}}.gen{{white-space:pre-wrap;font-size:0.9em}}.ctx{{white-space:pre-wrap;font-size:0.8em;color:#555}}
mark.imp{{background:#f8b4b4}}mark.leak{{background:#fcd34d}}mark.ooc{{background:#c4b5fd}}
.hidden{{color:#999;text-decoration:line-through}}.cutmark{{color:#b91c1c;font-weight:bold}}
.badge{{background:#b91c1c;color:#fff;border-radius:3px;padding:0 4px;margin-right:3px;font-size:0.8em}}
figure{{display:inline-block;margin:0.5em}}</style></head><body>
<h1>Eval report</h1>
<p>Base model <code>{html.escape(s['base_model_path'])}</code>, adapter <code>{html.escape(s['adapter_path'])}</code>;
{s['eval_rows']} eval rows from {s['eval_threads']} held-out threads; format <code>{html.escape(s['format'])}</code>;
precision {s['precision']}.<br>Generations: {html.escape(_settings_line(g))}.</p>
<h2>Headline</h2>{_table(headline_rows(s), HEADERS)}<p>{html.escape(NOTES)}</p>
{"".join(f"<p><b>Caveat</b>: {html.escape(c)}</p>" for c in caveats(g))}
<h2>Teacher-forced loss by token role</h2>{_table(role_rows(s), ROLE_HEADERS)}
<h2>Speaker-selection baselines</h2>{_table([(n, _fmt(v["accuracy"]), _fmt(v["mrr"]))
                                         for n, v in s["speaker_selection"]["baselines"].items()],
                                        ["baseline", "accuracy", "MRR"])}
{sections}
<h2>Text of the shown replies (stops on) vs the human replies</h2>{_table(text_rows(g), TEXT_HEADERS)}
<h2>Plots</h2>{figures}
<h2>Side by side, worst first</h2>
<p>Generated with stop strings off. <mark class="imp">impersonation</mark> <mark class="leak">template leak</mark>
<mark class="ooc">OOC</mark>; <span class="cutmark">⟦STOP⟧</span> marks where a front-end with stop strings cuts, and
<span class="hidden">struck-through grey text</span> is the run-on it hides.</p>
<table><thead><tr><th>context</th><th>human</th><th></th><th>base</th><th>adapter</th></tr></thead>
<tbody>{''.join(samples)}</tbody></table>
</body></html>
"""
