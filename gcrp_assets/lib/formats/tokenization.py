"""Samples to model-ready rows: render once, tokenize once, labels from character offsets.

A token trains when it lies wholly inside a trained span of the rendered string (model turns:
name, text and terminator; raw-text formats: everything; see `formats` for label policies).
Samples longer than `max_length` are cut into windows at turn boundaries, each window starting
again with BOS and the system prompt; a window's ids are those of tokenizing its rendered text as a
whole, so its token boundaries match inference. With `overlap_turns=K` each window after the first
starts K turns before the previous window's end; those turns are context only (never trained
twice). Cost: one tokenization of the whole sample; a window whose text is the sample's head
followed by a run of the sample's turns, with clean cuts at every junction (a clean added token
there, or for GPT-2 byte-level tokenizers a non-space character before ASCII whitespace, see
`_cut_rules`), takes its tokens from that tokenization; any other window is tokenized once more
(never one tokenization per turn prefix). `tokenize_samples` batches both over many samples.

Checks: `trained_tokens_in_masked_turns` finds trained tokens in user or system turns from the
rendered blocks and an offset mapping alone (the asset check `no_trained_token_in_user_or_system_turn`).

Special tokens (the rule): a control token is produced only where the *format* writes it (BOS,
EOS, role prefixes/suffixes, separators). Free text — the system prompt, names, message text —
never becomes a control token: a user who types `[INST]` gets the pieces of that spelling, not the
`[INST]` id. Concretely the rendered string is scanned for the spellings of the tokenizer's special
added tokens. If every occurrence lies in format text (the normal case), the string is tokenized in
one call, exactly as `tokenizer(text, add_special_tokens=False)` does at inference (a marker the
tokenizer defines as a special token becomes its single id; one the tokenizer does not define stays
plain text). If a spelling occurs inside free text, the string is cut at the format's own special
tokens only, those become their ids, and the pieces between them are tokenized with
`split_special_tokens=True`. Hugging Face tokenizers already cut the text at special tokens before
pre-tokenization, so for text without such spellings both paths give identical ids; with them, the
ids are those of an inference stack that keeps control tokens out of user text (mistral-common,
or a template renderer that tokenizes content separately). Limit: a special token whose
`lstrip`/`rstrip` flag swallows neighbouring whitespace is not emulated on the split path.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from gcrp_assets.lib.formats.chat_format import ChatFormat, Rendered, render

IGNORE = -100


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    text: str
    first_turn: int
    last_turn: int  # exclusive
    train_from: int | None = None  # turns [first_turn, train_from) are overlap context; None: first_turn

    @property
    def n_trained(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE)

    @property
    def first_trained_turn(self) -> int:
        return self.first_turn if self.train_from is None else self.train_from


@dataclass(frozen=True)
class Dropped:
    sample_id: str
    turn: int
    reason: str
    detail: str


def labels_for(rendered: Rendered, input_ids: list[int], offsets: list[tuple[int, int]]) -> list[int]:
    """Token id where the token lies wholly inside a trained span, else IGNORE."""
    spans = rendered.trained_spans()
    if not spans or not input_ids:
        return [IGNORE] * len(input_ids)
    ids = np.asarray(input_ids, dtype=np.int64)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
    ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
    at = np.searchsorted(starts, off[:, 0], side="right") - 1
    inside = (at >= 0) & (off[:, 1] > off[:, 0]) & (off[:, 1] <= ends[np.maximum(at, 0)])
    return np.where(inside, ids, IGNORE).tolist()


# --------------------------------------------------------------------------------------------
# Encoding with the special-token rule


class _TokenizerInfo:
    def __init__(self, tokenizer):
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
        specials |= {tok.content for tok in decoder.values() if getattr(tok, "special", False)}
        specials.discard("")
        self.n_added = len(decoder)
        self.special_re = (re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
                           if specials else None)
        self.special_ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
        backend = getattr(tokenizer, "backend_tokenizer", None)
        # Calling the Rust tokenizer directly skips per-call Python overhead; only when transformers
        # would not change its truncation/padding settings first.
        self.backend = (backend if backend is not None and getattr(backend, "truncation", None) is None
                        and getattr(backend, "padding", None) is None else None)
        self.clean_tokens, self.whitespace_cut = _cut_rules(backend, list(decoder.values()))


def _overlap(s: str, t: str) -> bool:
    """Whether an occurrence of `t` can overlap an occurrence of `s` other than coinciding with it."""
    if s == t:
        return any(s[-k:] == s[:k] for k in range(1, len(s)))
    return (s in t or t in s or any(t.endswith(s[:k]) for k in range(1, len(s)))
            or any(t.startswith(s[-k:]) for k in range(1, len(s))))


def _cut_rules(backend, added: list) -> tuple[tuple[str, ...], bool]:
    """Where a text can be cut so that tokenizing the two sides apart gives the same tokens (see `_cut`).

    - `clean_tokens`: added tokens matched as themselves (no lstrip/rstrip/single_word/normalized
      flag) that no other added token (nor the token itself) can overlap. Fast tokenizers split the
      text at added tokens before anything else (leftmost-longest matching), so every occurrence of
      such a token is split out and the pieces on either side are tokenized independently.
    - `whitespace_cut`: the pre-tokenizer is GPT-2's byte-level regex (`ByteLevel`, `use_regex`, no
      prefix space) without a normalizer, and no added token spans a non-space → whitespace step.
      That regex never lets a match run from a non-space character into following whitespace and
      has no look-behind, so between a non-space character and an ASCII whitespace character there
      is always a pre-token boundary whose two sides are split independently of the other side.
    Anything else (other pre-tokenizers, normalizers with normalized added tokens): no rule, and
    windows are tokenized on their own.
    """
    if backend is None:
        return (), False
    tokens = [t for t in added if getattr(t, "content", "")]
    contents = [t.content for t in tokens]
    normalizer = getattr(backend, "normalizer", None)
    if normalizer is not None and any(getattr(t, "normalized", True) for t in tokens):
        return (), False
    clean = tuple(t.content for k, t in enumerate(tokens)
                  if not (t.lstrip or t.rstrip or t.single_word or t.normalized)
                  and not any(_overlap(t.content, other) for other in contents[:k] + contents[k + 1:]))
    whitespace = False
    try:
        import json

        pre = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer is not None else {}
        whitespace = (normalizer is None and pre.get("type") == "ByteLevel" and pre.get("use_regex") is True
                      and pre.get("add_prefix_space") is False and len(clean) == len(tokens)
                      and not any(not a.isspace() and b in _CUT_SPACE for c in contents for a, b in zip(c, c[1:])))
    except (AttributeError, TypeError, ValueError):
        whitespace = False
    return clean, whitespace


_CUT_SPACE = " \t\n\r"


def _cut(info: "_TokenizerInfo", left: str, i: int, right: str, j: int) -> bool:
    """Whether `left[:i] + right[j:]` tokenizes as `left[:i]` and `right[j:]` each on its own, joined:
    a clean added token ends at the junction or starts there, or (GPT-2 byte-level regex) a non-space
    character meets ASCII whitespace. Both sides must be non-empty."""
    if i <= 0 or j >= len(right):
        return False
    if info.clean_tokens and (left.endswith(info.clean_tokens, 0, i) or right.startswith(info.clean_tokens, j)):
        return True
    return info.whitespace_cut and right[j] in _CUT_SPACE and not left[i - 1].isspace()


_INFO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _info(tokenizer) -> _TokenizerInfo:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    try:
        info = _INFO.get(tokenizer)
    except TypeError:
        return _TokenizerInfo(tokenizer)
    if info is None or info.n_added != len(decoder):
        info = _TokenizerInfo(tokenizer)
        try:
            _INFO[tokenizer] = info
        except TypeError:
            pass
    return info


@contextlib.contextmanager
def _special_tokens_mode(tokenizer, split: bool):
    """Set the Rust tokenizer's `encode_special_tokens` for one call and restore it afterwards
    (transformers leaves it at the last call's `split_special_tokens`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    previous = getattr(backend, "encode_special_tokens", None)
    if previous is None:
        yield
        return
    backend.encode_special_tokens = split
    try:
        yield
    finally:
        backend.encode_special_tokens = previous


def _marker_matches(info: _TokenizerInfo, rendered: Rendered) -> tuple[list[re.Match], bool]:
    """Special-token spellings in the text, and whether all of them lie in format (marker) text."""
    if info.special_re is None:
        return [], True
    matches = list(info.special_re.finditer(rendered.text))
    if not matches:
        return matches, True
    content = sorted(rendered.content_spans())
    starts = [s for s, _ in content]
    safe = True
    for m in matches:
        a, b = m.span()
        i = bisect.bisect_right(starts, a) - 1
        if (i >= 0 and content[i][1] > a) or (i + 1 < len(content) and content[i + 1][0] < b):
            safe = False
            break
    return matches, safe


def _split_encode(tokenizer, info: _TokenizerInfo, rendered: Rendered,
                  matches: list[re.Match]) -> tuple[list[int], list[tuple[int, int]]]:
    """Cut at the format's own special tokens; tokenize the pieces between with specials split."""
    content = sorted(rendered.content_spans())
    starts = [s for s, _ in content]

    def in_marker(a: int, b: int) -> bool:
        i = bisect.bisect_right(starts, a) - 1
        return not ((i >= 0 and content[i][1] > a) or (i + 1 < len(content) and content[i + 1][0] < b))

    text = rendered.text
    cuts = [m for m in matches if in_marker(*m.span())]
    pieces, pos = [], 0
    for m in cuts:
        pieces.append((pos, m.start()))
        pos = m.end()
    pieces.append((pos, len(text)))
    nonempty = [(a, b) for a, b in pieces if b > a]
    encoded = {}
    if nonempty:
        with _special_tokens_mode(tokenizer, split=True):
            enc = tokenizer([text[a:b] for a, b in nonempty], add_special_tokens=False,
                            return_offsets_mapping=True, split_special_tokens=True)
        for (a, b), ids, offs in zip(nonempty, enc["input_ids"], enc["offset_mapping"]):
            encoded[a] = (list(ids), [(a + s, a + e) for s, e in offs])
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for k, (a, b) in enumerate(pieces):
        if b > a:
            ids += encoded[a][0]
            offsets += encoded[a][1]
        if k < len(cuts):
            m = cuts[k]
            ids.append(info.special_ids[m.group()])
            offsets.append(m.span())
    return ids, offsets


class _Encoded:
    """Token ids of one text, with the offsets fetched lazily: when the Rust `Encoding` is at hand,
    labels need only a few `char_to_token` look-ups per trained span instead of every offset."""

    __slots__ = ("ids", "_offsets", "encoding", "whole")

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]] | None = None, encoding=None,
                 whole: bool = True):
        # whole: the text was tokenized in one call (not cut at special tokens by `_split_encode`)
        self.ids, self._offsets, self.encoding, self.whole = ids, offsets, encoding, whole

    @property
    def offsets(self) -> list[tuple[int, int]]:
        if self._offsets is None:
            self._offsets = self.encoding.offsets
        return self._offsets

    def labels(self, rendered: Rendered) -> list[int]:
        if self.encoding is None:
            return labels_for(rendered, self.ids, self.offsets)
        return _labels_from_encoding(rendered, self.ids, self.encoding)


def _span_run(encoding, n: int, s: int, e: int) -> tuple[int, int] | None:
    """The tokens lying wholly inside characters [s, e), as (first, last) indices; offsets never decrease
    (fast tokenizers): from the first token starting at or after `s` to the last token ending by `e`."""
    starts = encoding.token_to_chars
    first = last = None
    for p in range(s, e):
        t = encoding.char_to_token(p)
        if t is not None:
            while t < n and starts(t)[0] < s:
                t += 1
            first = t
            break
    if first is None or first >= n:
        return None
    for p in range(e - 1, s - 1, -1):
        t = encoding.char_to_token(p)
        if t is not None:
            while t + 1 < n and starts(t + 1)[0] < e and starts(t + 1)[1] <= e:
                t += 1
            while t >= 0 and starts(t)[1] > e:
                t -= 1
            last = t
            break
    if last is None or last < first:
        return None
    return first, last


def _labels_from_encoding(rendered: Rendered, ids: list[int], encoding) -> list[int]:
    """`labels_for`, from a few `char_to_token` look-ups per trained span."""
    n = len(ids)
    labels = [IGNORE] * n
    for s, e in rendered.trained_spans():
        run = _span_run(encoding, n, s, e)
        if run is not None:
            labels[run[0]:run[1] + 1] = ids[run[0]:run[1] + 1]
    return labels


def _encode_texts(tokenizer, info: _TokenizerInfo, texts: list[str]) -> list[_Encoded]:
    if not texts:
        return []
    if info.backend is not None:
        with _special_tokens_mode(tokenizer, split=False):
            encodings = info.backend.encode_batch(texts, add_special_tokens=False)
        return [_Encoded(e.ids, None, e) for e in encodings]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [_Encoded(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]


def _encode_batch(tokenizer, rendered: list[Rendered]) -> list[_Encoded]:
    info = _info(tokenizer)
    out: list = [None] * len(rendered)
    plain: list[int] = []
    for k, r in enumerate(rendered):
        matches, safe = _marker_matches(info, r)
        if safe:
            plain.append(k)
        else:
            out[k] = _Encoded(*_split_encode(tokenizer, info, r, matches), whole=False)
    for k, result in zip(plain, _encode_texts(tokenizer, info, [rendered[k].text for k in plain])):
        out[k] = result
    return out


def encode_rendered_batch(tokenizer, rendered: list[Rendered]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(input_ids, offsets) per rendered sample, following the special-token rule (module docstring)."""
    return [(e.ids, e.offsets) for e in _encode_batch(tokenizer, rendered)]


def encode_rendered(tokenizer, rendered: Rendered) -> tuple[list[int], list[tuple[int, int]]]:
    return encode_rendered_batch(tokenizer, [rendered])[0]


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Plain text (no block structure): the tokenizer's own handling of special spellings."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def tokenize_rendered(tokenizer, rendered: Rendered, first: int, last: int, *,
                      train_from: int | None = None) -> Tokenized:
    [enc] = _encode_batch(tokenizer, [rendered])
    return Tokenized(enc.ids, enc.labels(rendered), rendered.text, first, last, train_from)


# --------------------------------------------------------------------------------------------
# Windows


class _Sample:
    """Per-sample state shared by the planning and the executing pass."""

    def __init__(self, sample: dict, fmt: ChatFormat, tokenizer, policy: str | None):
        self.sample, self.fmt, self.policy = sample, fmt, policy
        self.bos, self.eos = tokenizer.bos_token, tokenizer.eos_token
        self.n_turns = len(sample["turns"])

    def render(self, turn_range: tuple[int, int] | None = None, train_from: int | None = None) -> Rendered:
        return render(self.sample, self.fmt, self.bos, turn_range, eos_token=self.eos, label_policy=self.policy,
                      train_from=train_from)


class _TokenIndex:
    """`at(pos)`: index of the first token of one encoding that starts at or after character `pos`
    (token starts never decrease); a few `char_to_token` look-ups when the Rust encoding is at hand."""

    def __init__(self, text_length: int, enc: _Encoded):
        self.enc, self.n, self.length = enc, len(enc.ids), text_length
        self.cache: dict[int, int] = {text_length: self.n}

    def at(self, pos: int) -> int:
        cache = self.cache
        if pos in cache:
            return cache[pos]
        enc, n = self.enc, self.n
        index = None
        if enc.encoding is not None:
            for p in range(pos, min(pos + 64, self.length)):
                t = enc.encoding.char_to_token(p)
                if t is not None:
                    while t < n and enc.encoding.token_to_chars(t)[0] < pos:
                        t += 1
                    index = t
                    break
        if index is None:
            index = bisect.bisect_left(enc.offsets, (pos, -1))
        cache[pos] = index
        return index

    def ends_by(self, t: int, pos: int) -> bool:
        """Whether every token before index `t` ends at or before character `pos`."""
        if t <= 0:
            return True
        enc = self.enc
        end = enc.encoding.token_to_chars(t - 1)[1] if enc.encoding is not None else enc.offsets[t - 1][1]
        return end <= pos


def _costs(full: Rendered, enc: _Encoded, index: _TokenIndex | None = None) -> tuple[int, list[int]]:
    """Tokens of BOS + system prompt, and of each turn, from the one full tokenization: the tokens
    that start inside each block (token starts never decrease)."""
    at = (index or _TokenIndex(len(full.text), enc)).at
    head = sum(at(b.end) - at(b.start) for b in full.blocks if b.turn < 0)
    return head, [at(b.end) - at(b.start) for b in full.blocks if b.turn >= 0]


def _splice(info: _TokenizerInfo, full: Rendered, enc: _Encoded, index: _TokenIndex, turn_blocks: list,
            window: Rendered, ctx: int, last: int) -> tuple[list[int], list[int]] | None:
    """A window's (input_ids, labels) cut out of the whole sample's tokenization, or None when that
    cannot be shown to equal tokenizing the window on its own.

    The window's text must be the sample's head (BOS, system prompt) followed by the sample's text
    of turns [ctx, last), character for character; and each junction (end of the head in the sample,
    start of turn `ctx` in the sample, end of turn `last - 1` in the sample, and head + turn `ctx` in
    the window) must be a clean cut (`_cut`). Then the window's tokens are the sample's tokens of
    the head followed by its tokens of those turns, with the same offsets shifted.
    """
    text, wtext = full.text, window.text
    h = turn_blocks[0].start
    a, b = turn_blocks[ctx].start, turn_blocks[last - 1].end
    if len(wtext) != h + b - a or not wtext.startswith(text[:h]) or not wtext.endswith(text[a:b]):
        return None
    if b < len(text) and not _cut(info, text, b, text, b):
        return None
    at = index.at
    i_b = at(b)
    if not index.ends_by(i_b, b):
        return None
    if a == h:
        i_h = i_a = 0
    else:
        if not (_cut(info, text, h, text, h) and _cut(info, text, a, text, a) and _cut(info, text, h, text, a)):
            return None
        i_h, i_a = at(h), at(a)
        if not (index.ends_by(i_h, h) and index.ends_by(i_a, a)):
            return None
    ids = enc.ids[:i_h] + enc.ids[i_a:i_b]
    shift = a - h
    if enc.encoding is None:
        offsets = enc.offsets[:i_h] + [(s - shift, e - shift) for s, e in enc.offsets[i_a:i_b]]
        return ids, labels_for(window, ids, offsets)
    labels = [IGNORE] * len(ids)
    n = len(enc.ids)
    for s, e in window.trained_spans():
        if a == h:  # the window is the sample's text up to `b`: nothing moved
            pieces = [(s, e, 0)]
        else:  # no token crosses the cut at `h`: a span across it is the same as its two parts
            pieces = [(s, min(e, h), 0)] if s < h else []
            if e > h:
                pieces.append((max(s, h) + shift, e + shift, i_a - i_h))
        for ps, pe, moved in pieces:
            run = _span_run(enc.encoding, n, ps, pe)
            if run is not None:
                first, end = run[0] - moved, run[1] + 1 - moved
                labels[first:end] = ids[first:end]
    return ids, labels


def _window_loop(state: _Sample, head: int, cost: list[int], max_length: int, overlap: int, make):
    """Turn-boundary windows. `make(ctx, first, last)` returns a Tokenized (or a stand-in with
    `input_ids`/`n_trained`). Returns (windows, dropped)."""
    sample_id = state.sample.get("sample_id", "")
    n_turns = state.n_turns
    windows, dropped = [], []
    first = floor = 0
    while first < n_turns:
        if head + cost[first] > max_length:
            dropped.append(Dropped(sample_id, first, "turn_exceeds_max_length",
                                   f"turn {first} needs {cost[first]} tokens + {head} of system prompt "
                                   f"> max_length {max_length}"))
            first += 1
            floor = first
            continue
        ctx = max(floor, first - overlap)
        used = head + sum(cost[ctx:first])
        while ctx < first and used + cost[first] > max_length:
            used -= cost[ctx]
            ctx += 1
        last = first
        while last < n_turns and used + cost[last] <= max_length:
            used += cost[last]
            last += 1
        window = make(ctx, first, last)
        # Re-tokenizing a window can merge differently at its edges; shrink until it fits
        # (context turns go first, then trailing turns).
        while len(window.input_ids) > max_length and (ctx < first or last - first > 1):
            if ctx < first:
                ctx += 1
            else:
                last -= 1
            window = make(ctx, first, last)
        if len(window.input_ids) > max_length:
            dropped.append(Dropped(sample_id, first, "turn_exceeds_max_length",
                                   f"turn {first} does not fit in max_length {max_length}"))
            floor = last
        elif window.n_trained == 0:
            dropped.append(Dropped(sample_id, first, "no_trained_tokens",
                                   f"turns {first}..{last - 1} hold no trained token"))
        else:
            windows.append(window)
        first = last
    return windows, dropped


class _Estimate:
    """A planned window before tokenization: its estimated length, assumed trainable."""
    n_trained = 1

    def __init__(self, length: int):
        self.input_ids = range(length)


def _check_overlap(overlap_turns: int) -> int:
    if not isinstance(overlap_turns, int) or overlap_turns < 0:
        raise ValueError(f"overlap_turns must be a non-negative integer, got {overlap_turns!r}")
    return overlap_turns


def tokenize_samples(samples: Iterable[dict], fmt: ChatFormat, tokenizer, max_length: int, *,
                     label_policy: str | None = None, overlap_turns: int = 0,
                     batch_size: int = 128, reuse_tokens: bool = True) -> Iterator[tuple[list[Tokenized], list[Dropped]]]:
    """`tokenize_sample` over many samples, batching the tokenizer calls; yields in input order.

    Per batch: render every sample once and tokenize the texts in one call; plan the windows of
    samples that do not fit from those token counts; cut each window's tokens out of its sample's
    tokenization where its junctions are clean cuts (`_splice`; `reuse_tokens=False` never does),
    and tokenize the other windows in one more call. Only a window whose re-tokenization overshoots
    is tokenized again on its own.
    """
    overlap = _check_overlap(overlap_turns)
    batch: list[dict] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) >= batch_size:
            yield from _tokenize_batch(batch, fmt, tokenizer, max_length, label_policy, overlap, reuse_tokens)
            batch = []
    if batch:
        yield from _tokenize_batch(batch, fmt, tokenizer, max_length, label_policy, overlap, reuse_tokens)


def _tokenize_batch(samples: list[dict], fmt: ChatFormat, tokenizer, max_length: int, label_policy: str | None,
                    overlap: int, reuse_tokens: bool = True) -> list[tuple[list[Tokenized], list[Dropped]]]:
    info = _info(tokenizer)
    states = [_Sample(s, fmt, tokenizer, label_policy) for s in samples]
    fulls = [state.render() for state in states]
    encoded = _encode_batch(tokenizer, fulls)
    results: list = [None] * len(samples)
    plans: list[tuple[int, tuple[int, int], list[tuple[int, int, int]], _TokenIndex]] = []
    for k, (state, full, enc) in enumerate(zip(states, fulls, encoded)):
        if len(enc.ids) <= max_length:
            results[k] = ([Tokenized(enc.ids, enc.labels(full), full.text, 0, state.n_turns, 0)], [])
            continue
        index = _TokenIndex(len(full.text), enc)
        head, cost = _costs(full, enc, index)
        keys: list[tuple[int, int, int]] = []

        def plan(ctx, first, last, head=head, cost=cost, keys=keys):
            keys.append((ctx, first, last))
            return _Estimate(head + sum(cost[ctx:last]))

        _window_loop(state, head, cost, max_length, overlap, plan)
        plans.append((k, (head, tuple(cost)), keys, index))

    # Planned windows: cut out of their sample's tokens where that is exact, the rest in one call.
    done, pending = {}, []
    for k, _, keys, index in plans:
        full, enc = fulls[k], encoded[k]
        turn_blocks = [blk for blk in full.blocks if blk.turn >= 0]
        reusable = reuse_tokens and enc.whole
        for key in keys:
            r = states[k].render((key[0], key[2]), key[1])
            spliced = _splice(info, full, enc, index, turn_blocks, r, key[0], key[2]) if reusable else None
            if spliced is None:
                pending.append(((k, key), r))
            else:
                done[(k, key)] = Tokenized(spliced[0], spliced[1], r.text, key[0], key[2], key[1])
    for ((k, key), r), enc in zip(pending, _encode_batch(tokenizer, [r for _, r in pending]) if pending else []):
        done[(k, key)] = Tokenized(enc.ids, enc.labels(r), r.text, key[0], key[2], key[1])

    for k, (head, cost), _, _ in plans:
        state = states[k]

        def make(ctx, first, last, k=k, state=state):
            window = done.get((k, (ctx, first, last)))
            if window is None:
                window = tokenize_rendered(tokenizer, state.render((ctx, last), first), ctx, last, train_from=first)
            return window

        results[k] = _window_loop(state, head, list(cost), max_length, overlap, make)
    return results


def tokenize_sample(sample: dict, fmt: ChatFormat, tokenizer, max_length: int, *, label_policy: str | None = None,
                    overlap_turns: int = 0, reuse_tokens: bool = True) -> tuple[list[Tokenized], list[Dropped]]:
    """One sample → windows of at most `max_length` tokens, and the turns that could not be kept.

    `label_policy`: None → the format's default (see `formats`). `overlap_turns`: turns of context
    repeated at the start of each later window (not trained again). `reuse_tokens=False`: tokenize
    every window on its own instead of cutting it out of the sample's tokens (same result; for tests).
    """
    return _tokenize_batch([sample], fmt, tokenizer, max_length, label_policy, _check_overlap(overlap_turns),
                           reuse_tokens)[0]


# --------------------------------------------------------------------------------------------
# Checking labels against the rendered turns


MASKED_KINDS = ("user", "system")


def trained_tokens_in_masked_turns(rendered: Rendered, labels: list[int],
                                   offsets: list[tuple[int, int]]) -> list[int]:
    """Indices of tokens that train (label != IGNORE) although some of their characters lie in a user
    or system block of `rendered` (its separator and header included).

    Independent of how labels are made: only the rendered blocks' character spans per role and the
    tokenizer's offset mapping of the same text are used. Under the `all` label policy every token
    trains by design, so the answer is every such token.
    """
    if len(labels) != len(offsets):
        raise ValueError(f"{len(labels)} labels but {len(offsets)} offsets")
    masked = sorted((b.start, b.end) for b in rendered.blocks if b.kind in MASKED_KINDS and b.end > b.start)
    if not masked:
        return []
    starts = [s for s, _ in masked]
    bad = []
    for index, (label, (s, e)) in enumerate(zip(labels, offsets)):
        if label == IGNORE or e <= s:
            continue
        # the last masked block starting before the token's end overlaps it when it ends after the start
        k = bisect.bisect_left(starts, e) - 1
        if k >= 0 and masked[k][1] > s:
            bad.append(index)
    return bad


def check_no_trained_tokens_in_masked_turns(tokenizer, rows: Iterable[tuple[Rendered, list[int], list[int]]],
                                            batch_size: int = 256) -> tuple[int, int, int]:
    """Over (rendered window, input_ids, labels) rows: (rows with a trained token in a user or system
    turn, such tokens, rows whose text does not tokenize to their input_ids, hence uncheckable).

    The offsets come from tokenizing each rendered text again (`encode_rendered_batch`, the same
    special-token rule as training), batched."""
    bad_rows = bad_tokens = mismatched = 0
    batch: list = []

    def flush():
        nonlocal bad_rows, bad_tokens, mismatched
        encoded = encode_rendered_batch(tokenizer, [r for r, _, _ in batch])
        for (rendered, ids, labels), (ids2, offsets) in zip(batch, encoded):
            if list(ids) != list(ids2):
                mismatched += 1
                continue
            found = trained_tokens_in_masked_turns(rendered, labels, offsets)
            bad_rows += bool(found)
            bad_tokens += len(found)
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return bad_rows, bad_tokens, mismatched
