"""Scoring of generated continuations: detector outcomes per continuation (stops off and on), the
generation summary per decoding and arm with McNemar's test per binary outcome, and the report's order
of contexts (worst first)."""

from __future__ import annotations

from gcrp_assets.lib.clean.ooc import split_ooc
from gcrp_assets.lib.evaluation import detectors, generation
from gcrp_assets.lib.evaluation import metrics as em

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

# Failures that put a context first in the report (adapter's count, then base's).
REPORT_FAILURES = ("impersonation", "impersonation_shown", "template_leak", "run_on", "ooc", "other_character_shown")


def score_continuation(cont: generation.Continuation, case: generation.GenerationCase, fmt, eos_token) -> dict:
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
        **{name: outcome == name for name in em.STOP_OUTCOMES},
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


def summarize_generations(records: list[dict], n_samples: int, min_events: int = 20) -> dict:
    """Rates and text metrics per decoding (greedy = draw 0, sampled = draws 1..K) and arm, the human replies
    of the same contexts beside them, and McNemar's exact test for every binary outcome (pairs: the same
    context and draw in both arms, the same seed). A rate whose pooled pair table (both arms) holds fewer
    than `min_events` events is marked `too_few_events`: the report prints that instead of its p-value."""
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
        section = {"n": len(items), "min_events": min_events, "rates": {}}
        for key, _ in BINARY:
            rates = em.paired_rates([r["base"][d][key] for r, d in items], [r["adapter"][d][key] for r, d in items])
            section["rates"][key] = {**rates, "too_few_events": rates["events"] < min_events}
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


def worst_first(records: list[dict]) -> list[dict]:
    """Contexts ordered by how many failures their continuations show (adapter first, then base), stable."""

    def badness(r):
        return (sum(c[f] for c in r["adapter"] for f in REPORT_FAILURES),
                sum(c[f] for c in r["base"] for f in REPORT_FAILURES))

    return sorted(records, key=badness, reverse=True)
