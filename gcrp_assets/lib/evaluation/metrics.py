"""Plain evaluation metrics for base vs base + adapter: paired statistics, loss helpers, behaviour rates.

Pure functions over numbers and strings (numpy + standard library; no model, no Dagster). The
formulas follow the evaluation reference (loss §1, behaviour §3, pairing §4):

- paired statistics over *threads* (turns inside a thread are not independent): a percentile
  bootstrap of the mean per-thread delta, and McNemar's exact test for paired binary outcomes;
- bits per byte, per-thread token-weighted losses;
- repetition and diversity (distinct-n, rep-n, copies of earlier turns) on a regex word tokenizer;
- OOC rate (with the project's `split_ooc`), reply length vs human replies, template leaks and
  stop outcomes of generations.

Empty inputs give `nan` where a rate or a statistic is undefined, never a made-up 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from gcrp_assets.lib.clean.ooc import split_ooc

NAN = float("nan")

# Template markers that must not appear inside a reply (evaluation.md §3.1 detector 2, §3.3, §3.4 leaks).
TEMPLATE_MARKERS: tuple[str, ...] = (
    "[INST]", "[/INST]", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>",
    "::::user", "::::assistant", "</s>", "<|endoftext|>",
)
# Literal end-of-sequence / end-of-turn tokens as they appear in text decoded with special tokens kept.
END_TOKENS: tuple[str, ...] = ("</s>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<eos>")

# The classes of `stop_outcome`, in the order continuations are scored (lib/evaluation/scoring.py).
STOP_OUTCOMES = ("run_on", "natural_stop", "truncated")


# --- paired statistics (§4) -------------------------------------------------------------------------

def _percentile_ci(statistic, n: int, n_resamples: int, seed: int) -> tuple[float, float]:
    """95 % percentile bootstrap interval: `statistic` maps a (resamples, n) array of thread indices drawn with
    replacement (`numpy.random.default_rng(seed)`) to one value per resample; drawn in chunks so memory stays
    bounded for many threads. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 2_000_000 // n))
    stats = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        stats[start:start + size] = statistic(rng.integers(0, n, (size, n)))
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def paired_bootstrap(deltas: Sequence[float], n_resamples: int = 10_000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-thread deltas with a 95 % percentile bootstrap CI: `(mean, low, high)`.

    `deltas[i]` = metric(adapter) − metric(base) on thread i (e.g. token-weighted NLL). Each resample
    draws n threads with replacement (indices from `numpy.random.default_rng(seed)`), and
    `mean* = (1/n) Σ_j d[idx_j]`; `low, high` = 2.5th / 97.5th percentiles (linear interpolation) of
    the `n_resamples` values of `mean*` (Koehn 2004 style). Deterministic for a seed.
    n = 0 → `(nan, nan, nan)`; n = 1 → `(d, nan, nan)` (no spread to resample).
    Non-finite deltas raise `ValueError` (a thread without scored tokens must be dropped upstream).
    """
    d = np.asarray(list(deltas), dtype=np.float64)
    if d.ndim != 1:
        raise ValueError("deltas must be one-dimensional")
    if not np.all(np.isfinite(d)):
        raise ValueError("deltas contain nan or inf")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    n = len(d)
    if n == 0:
        return NAN, NAN, NAN
    mean = float(d.mean())
    if n == 1:
        return mean, NAN, NAN
    low, high = _percentile_ci(lambda idx: d[idx].mean(axis=1), n, n_resamples, seed)
    return mean, low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value on the discordant pairs b, c.

    Under H0 each discordant pair falls either way with probability 1/2, so with m = b + c and
    k = min(b, c): `p = min(1, 2 · Σ_{i=0..k} C(m, i) / 2^m)`. b = c = 0 → 1.0.
    """
    if b < 0 or c < 0 or int(b) != b or int(c) != c:
        raise ValueError("b and c must be non-negative integers")
    b, c = int(b), int(c)
    m, k = b + c, min(b, c)
    if m == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m)


def paired_rates(base_flags: Sequence[bool], adapter_flags: Sequence[bool]) -> dict:
    """Rates of a binary outcome (e.g. impersonated, OOC, run-on) for both arms on the same contexts.

    Returns `{n, base_rate, adapter_rate, delta, base_events, adapter_events, events, b, c, p}`: rate = (1/n)
    Σ flag; events = flagged outcomes per arm and in the pooled pair table (both arms); delta = adapter_rate −
    base_rate; b = #(base flagged, adapter not), c = #(adapter flagged, base not) (discordant pairs);
    p = `mcnemar_exact(b, c)`. Both lists are aligned context by context; n = 0 gives nan rates, p = 1.
    """
    base = [bool(x) for x in base_flags]
    adapter = [bool(x) for x in adapter_flags]
    if len(base) != len(adapter):
        raise ValueError(f"paired flags differ in length: {len(base)} vs {len(adapter)}")
    n = len(base)
    b = sum(1 for x, y in zip(base, adapter) if x and not y)
    c = sum(1 for x, y in zip(base, adapter) if y and not x)
    base_rate = sum(base) / n if n else NAN
    adapter_rate = sum(adapter) / n if n else NAN
    return {"n": n, "base_rate": base_rate, "adapter_rate": adapter_rate, "delta": adapter_rate - base_rate,
            "base_events": sum(base), "adapter_events": sum(adapter), "events": sum(base) + sum(adapter),
            "b": b, "c": c, "p": mcnemar_exact(b, c)}


# --- losses (§1) ------------------------------------------------------------------------------------

def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """`bpb = Σ NLL_nats / (ln 2 · Σ UTF-8 bytes of the scored text)`; nan when `n_bytes` <= 0."""
    if n_bytes <= 0:
        return NAN
    return float(nll_nats) / (math.log(2) * n_bytes)


def utf8_bytes(text: str) -> int:
    """Number of UTF-8 bytes of `text` (the denominator of bits per byte)."""
    return len(text.encode("utf-8"))


def thread_level_losses(rows: Iterable[Mapping]) -> dict[str, float]:
    """Token-weighted loss per thread from per-row records `{thread_key, nll, tokens}`.

    `nll` is the *summed* NLL (nats) of the row's scored tokens and `tokens` their count (as
    `evaluation.per_row_nll` returns); rows of one thread (windows, samples) are pooled:
    `loss[t] = Σ_{rows of t} nll / Σ_{rows of t} tokens`. Threads with no scored token are left out.
    """
    return {key: nll / tokens for key, (nll, tokens) in thread_sums(rows).items()}


def cluster_bootstrap_difference(nll_base: Sequence[float], nll_adapter: Sequence[float], tokens: Sequence[int],
                                 n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The token-weighted loss difference `Σ nll_adapter / Σ tokens − Σ nll_base / Σ tokens` over threads, with a
    95 % percentile CI of that same statistic: `(difference, low, high)`.

    Threads are the clusters (tokens of one thread are not independent): each resample draws n threads with
    replacement (`numpy.random.default_rng(seed)`) and recomputes the token-weighted difference on them, so the
    interval is of the number printed beside it, not of the per-thread mean. Both arms score the same tokens
    per thread (`tokens[i]`: thread i's scored tokens). n = 0 → nan; n = 1 → `(d, nan, nan)`.
    """
    b = np.asarray(list(nll_base), dtype=np.float64)
    a = np.asarray(list(nll_adapter), dtype=np.float64)
    t = np.asarray(list(tokens), dtype=np.float64)
    if not (len(a) == len(b) == len(t)):
        raise ValueError("nll_base, nll_adapter and tokens must have one value per thread")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))) or np.any(t <= 0):
        raise ValueError("every thread needs finite losses and at least one scored token")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    n = len(t)
    if n == 0:
        return NAN, NAN, NAN
    diff_nll = a - b
    point = float(diff_nll.sum() / t.sum())
    if n == 1:
        return point, NAN, NAN
    low, high = _percentile_ci(lambda idx: diff_nll[idx].sum(axis=1) / t[idx].sum(axis=1), n, n_resamples, seed)
    return point, low, high


def thread_sums(rows: Iterable[Mapping]) -> dict[str, tuple[float, int]]:
    """Per thread key, (summed NLL, scored tokens) over its rows (`thread_key`, `nll`, `tokens`)."""
    sums: dict[str, tuple[float, int]] = {}
    for row in rows:
        nll, tokens = sums.get(row["thread_key"], (0.0, 0))
        sums[row["thread_key"]] = (nll + float(row["nll"]), tokens + int(row["tokens"]))
    return {key: value for key, value in sums.items() if value[1] > 0}


def paired_thread_deltas(base: Mapping[str, float],
                         adapter: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    """(sorted thread keys, `adapter[t] − base[t]` per key) for `paired_bootstrap`.

    The key sets must match (same threads in both arms), else `ValueError`.
    """
    if set(base) != set(adapter):
        missing = sorted(set(base) ^ set(adapter))
        raise ValueError(f"base and adapter were scored on different threads: {missing[:5]}")
    keys = sorted(base)
    return keys, np.array([adapter[k] - base[k] for k in keys], dtype=np.float64)


# --- repetition and diversity (§3.6) ----------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: runs of letters/digits, inner apostrophes kept (`don't` is one word)."""
    return [w.lower() for w in _WORD.findall(text)]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of a token list, in order (none when it has fewer than n tokens)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _as_texts(texts: Iterable[str] | str) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Corpus-level distinct-n (Li et al. 2016): `|unique n-grams| / |n-grams|` over all texts.

    n-grams are taken within each text (never across two texts), on `words()`. nan if no text has n words.
    """
    grams = [g for text in _as_texts(texts) for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else NAN


def rep_n(text: str, n: int) -> float:
    """Share of repeated n-grams within one text (Welleck et al. 2019): `1 − |unique n-grams| / |n-grams|`.

    0 for a text without repeats; nan for a text with fewer than n words.
    """
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else NAN


def diversity(text: str) -> float:
    """`Π_{n=2..4} (1 − rep-n)` (Welleck et al.; Copyisallyouneed); nan for a text under 4 words."""
    return math.prod(1.0 - rep_n(text, n) for n in (2, 3, 4))


def max_overlap_with_history(reply: str, history: Iterable[str] | str, n: int = 4) -> float:
    """Cross-turn copying: the largest share of the reply's word n-grams found in one earlier turn.

    `max_h |{i : g_i ∈ G_n(h)}| / N`, where g_1..g_N are the reply's n-grams (with repeats) and G_n(h)
    the set of n-grams of earlier turn h. 1.0 = the reply is a copy of (a part of) one earlier turn.
    0.0 with no history; nan when the reply has fewer than n words.
    """
    grams = ngrams(words(reply), n)
    if not grams:
        return NAN
    best = 0.0
    for turn in _as_texts(history):
        seen = set(ngrams(words(turn), n))
        if seen:
            best = max(best, sum(1 for g in grams if g in seen) / len(grams))
    return best


# --- OOC, length, format, stops (§3.2–3.4, §3.7) -----------------------------------------------------

def ooc_rate(texts: Iterable[str]) -> float:
    """Share of texts with at least one OOC remark according to `ooc.split_ooc`; nan for no texts."""
    items = _as_texts(texts)
    if not items:
        return NAN
    return sum(1 for t in items if split_ooc(t).remarks) / len(items)


def _median_iqr(values: Sequence[int]) -> tuple[float, float]:
    if not values:
        return NAN, NAN
    q25, q50, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return float(q50), float(q75 - q25)


def length_summary(model_texts: Iterable[str], human_texts: Iterable[str]) -> dict:
    """Reply length in words (`words()`), model vs the human replies of the same slots.

    Returns `{n_model, n_human, model_median, model_iqr, human_median, human_iqr, ratio_of_medians}`;
    IQR = Q75 − Q25 (numpy linear percentiles); ratio = model_median / human_median (nan if the human
    median is 0 or a side is empty).
    """
    model_counts = [len(words(t)) for t in _as_texts(model_texts)]
    human_counts = [len(words(t)) for t in _as_texts(human_texts)]
    model_median, model_iqr = _median_iqr(model_counts)
    human_median, human_iqr = _median_iqr(human_counts)
    ratio = model_median / human_median if human_median and not math.isnan(human_median) else NAN
    return {"n_model": len(model_counts), "n_human": len(human_counts),
            "model_median": model_median, "model_iqr": model_iqr,
            "human_median": human_median, "human_iqr": human_iqr, "ratio_of_medians": ratio}


def template_leaks(text: str, markers: Iterable[str] = TEMPLATE_MARKERS) -> bool:
    """True if any (non-empty) template marker, e.g. `[INST]`, `<|im_start|>`, `::::user`, is in the reply.

    Pass the reply only (cut at its terminator, `evaluation.cut_reply`), or the format's own terminator
    counts as a leak.
    """
    return any(m and m in text for m in markers)


def stop_outcome(continuation: str, stop_strings: Iterable[str], terminator: str, hit_cap: bool,
                 end_tokens: Iterable[str] = END_TOKENS) -> str:
    """Classify one generation as "natural_stop", "truncated" or "run_on" (evaluation.md §3.4).

    The reply ends at the first end marker: the format's `terminator` (e.g. `[/INST]`, `<|im_end|>`),
    a stop string (next-turn markers such as `[INST]`, `\\n\\n::::`) or a literal EOS/EOT token.
    - an end marker followed by more than bare markers and whitespace (a next-turn header, another
      speaker's block, more story) → "run_on";
    - an end marker with only bare markers / whitespace after it → "natural_stop";
    - no end marker and `hit_cap` (generation reached max_new_tokens) → "truncated";
    - no end marker, cap not reached → "natural_stop" (an EOS token that decoding dropped).
    """
    markers = sorted({m for m in (terminator, *stop_strings, *end_tokens) if m}, key=len, reverse=True)
    hits = [(continuation.find(m), m) for m in markers if m in continuation]
    if not hits:
        return "truncated" if hit_cap else "natural_stop"
    rest = continuation[min(h[0] for h in hits):]
    for m in markers:  # longest first: `::::user` goes before a shorter marker it contains
        rest = rest.replace(m, "")
    return "run_on" if rest.strip() else "natural_stop"


# --- additions: pooled repetition, rates, length distributions ---------------------------------------

def repeated_ngram_rate(texts: Iterable[str] | str, n: int) -> float:
    """Pooled rep-n over replies: `Σ_texts (|n-grams| − |unique n-grams|) / Σ_texts |n-grams|`.

    The share of a reply's word n-grams that repeat an n-gram earlier in the *same* reply, weighted by
    n-gram count (a long looping reply weighs more than a short clean one). nan when no text has n words.
    """
    total = repeated = 0
    for text in _as_texts(texts):
        grams = ngrams(words(text), n)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    return repeated / total if total else NAN


def rate(flags: Iterable[bool]) -> float:
    """Share of true flags; nan for none."""
    items = [bool(f) for f in flags]
    return sum(items) / len(items) if items else NAN


def mean(values: Iterable[float]) -> float:
    """Mean of the finite values; nan when there is none."""
    items = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(items) / len(items) if items else NAN


def ks_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov–Smirnov statistic `max_x |F_a(x) − F_b(x)|` of the empirical CDFs; nan if a side
    is empty. 0 = the same distribution of values, 1 = no overlap."""
    if not len(a) or not len(b):
        return NAN
    xa, xb = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([xa, xb])
    fa = np.searchsorted(xa, grid, side="right") / len(xa)
    fb = np.searchsorted(xb, grid, side="right") / len(xb)
    return float(np.max(np.abs(fa - fb)))


def word_lengths(texts: Iterable[str] | str) -> list[int]:
    """Words per text (`words()`), in order: the length distribution of replies."""
    return [len(words(t)) for t in _as_texts(texts)]
