"""Speaker selection: which character does the model make speak next? (evaluation.md §3.5)

- `score_candidates` / `candidate_logprobs`: teacher-forced log-likelihood of each candidate
  continuation given one context (lm-eval's `multiple_choice` pattern). The context is run once
  (its key/value cache is shared) and all candidates go through one batched forward pass.
- `rank_speakers`: for a gold model turn of a held-out sample, the context up to that turn plus the
  format's model header (`[INST]model\\n`, `<|im_start|>assistant\\n`, `::::assistant:`), then every
  roster name's header `Name:` scored as the next speaker; rank of the gold speaker, top pick, and
  whether the top pick is the user's (human-owned) character. Raw and length-normalised scores.
- Baselines over the sequence of earlier speakers: most recent other speaker, round robin, most
  frequent so far; each returns a full ranking so accuracy and MRR compare with the model's.
- `speaker_metrics(ranks)`: top-1 accuracy and mean reciprocal rank.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gcrp_assets.lib.evaluation.losses import backbone_and_head as _backbone_and_head
from gcrp_assets.lib.formats.chat_format import ChatFormat, generation_prompt

NORMALIZATIONS = (None, "tokens", "chars", "bytes")


@dataclass(frozen=True)
class CandidateScore:
    candidate: str
    logprob: float   # Σ log P(token | everything before it) over the tokens that cover the candidate
    n_tokens: int    # tokens scored (a token straddling the context/candidate boundary counts)
    n_chars: int
    n_bytes: int

    def normalized(self, by: str | None) -> float:
        """logprob, or logprob divided by the candidate's length in tokens / characters / UTF-8 bytes."""
        if by is None:
            return self.logprob
        length = {"tokens": self.n_tokens, "chars": self.n_chars, "bytes": self.n_bytes}.get(by)
        if length is None:
            raise ValueError(f"unknown normalization {by!r}; choose one of {NORMALIZATIONS}")
        return self.logprob / length


def _input_device(model, backbone):
    embeddings = backbone.get_input_embeddings() if hasattr(backbone, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def score_candidates(model, tokenizer, context: str, candidates: Sequence[str],
                     share_prefix: bool = True) -> list[CandidateScore]:
    """Log-probability of each `candidate` as the continuation of `context`, in candidate order.

    Each `context + candidate` is tokenized as ONE string (fast tokenizer, offsets, no added special
    tokens; a BOS belongs in `context` as text, as `formats.render` writes it), so the tokens are those
    the model sees at inference. The scored tokens of a candidate are those whose character span ends
    after `len(context)`: a token that straddles the boundary (the context's last characters merged
    with the candidate's first) is scored with the candidate, and it is predicted from the tokens
    before it. `logprob = Σ_{scored t} log softmax(logits at t−1)[id_t]`.

    The tokens common to every candidate's tokenization and lying wholly in the context are run once
    (`share_prefix=True`: their key/value cache is repeated for the batch), then all candidates'
    remaining tokens in one right-padded batch. `share_prefix=False` runs the full sequences as one
    batch instead (same numbers; for models whose cache cannot be repeated). The LM head is applied
    only at the scored positions.
    """
    import torch

    candidates = list(candidates)
    if not candidates:
        return []
    if any(not c for c in candidates):
        raise ValueError("candidates must be non-empty strings")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("candidate scoring needs a fast tokenizer (character offsets)")

    cut = len(context)
    sequences: list[list[int]] = []
    firsts: list[int] = []
    for candidate in candidates:
        enc = tokenizer(context + candidate, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        first = next((i for i, (_, end) in enumerate(offsets) if end > cut), None)
        if first is None:  # cannot happen for a non-empty candidate; guard against odd tokenizers
            raise ValueError(f"no token covers candidate {candidate!r}")
        if first == 0:
            raise ValueError("the context must contribute at least one token before each candidate")
        sequences.append(ids)
        firsts.append(first)

    # Shared prefix: identical token ids in every sequence, before every candidate's first scored token.
    limit = min(firsts)
    common = 0
    while common < limit and all(seq[common] == sequences[0][common] for seq in sequences):
        common += 1
    if common == 0:
        raise ValueError("the candidates share no context token; score them one at a time")

    backbone, head = _backbone_and_head(model)
    device = _input_device(model, backbone)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.no_grad():
            hidden_for = _hidden_states(backbone, sequences, common, pad_id, device, share_prefix)
            # One head call over every scored position: (hidden state at t−1, target id at t).
            rows, targets, owner = [], [], []
            for i, (seq, first) in enumerate(zip(sequences, firsts)):
                for t in range(first, len(seq)):
                    rows.append(hidden_for(i, t - 1))
                    targets.append(seq[t])
                    owner.append(i)
            logits = head(torch.stack(rows)).float()
            target = torch.tensor(targets, device=logits.device)
            token_logprobs = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
            totals = torch.zeros(len(candidates), dtype=torch.float64, device=logits.device)
            totals.index_add_(0, torch.tensor(owner, device=logits.device), token_logprobs.double())
    finally:
        if was_training:
            model.train()
    return [CandidateScore(c, float(totals[i]), len(seq) - first, len(c), len(c.encode("utf-8")))
            for i, (c, seq, first) in enumerate(zip(candidates, sequences, firsts))]


def _hidden_states(backbone, sequences, common, pad_id, device, share_prefix):
    """A function (candidate i, position t) -> final hidden state at position t of sequence i."""
    import torch

    width = max(len(s) for s in sequences)
    if share_prefix:
        prefix = torch.tensor([sequences[0][:common]], device=device)
        out = backbone(input_ids=prefix, use_cache=True)
        cache = getattr(out, "past_key_values", None)
        if cache is not None and hasattr(cache, "batch_repeat_interleave"):
            prefix_last = out.last_hidden_state[0, -1]
            cache.batch_repeat_interleave(len(sequences))
            suffix_width = width - common
            ids = torch.full((len(sequences), suffix_width), pad_id, dtype=torch.long, device=device)
            mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
            for i, seq in enumerate(sequences):
                ids[i, :len(seq) - common] = torch.tensor(seq[common:], device=device)
                mask[i, :len(seq)] = 1
            suffix = backbone(input_ids=ids, attention_mask=mask, past_key_values=cache,
                              use_cache=True).last_hidden_state
            return lambda i, t: prefix_last if t == common - 1 else suffix[i, t - common]
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(sequences), width), dtype=torch.long, device=device)
    for i, seq in enumerate(sequences):
        ids[i, :len(seq)] = torch.tensor(seq, device=device)
        mask[i, :len(seq)] = 1
    full = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    return lambda i, t: full[i, t]


def candidate_logprobs(model, tokenizer, context: str, candidates: Sequence[str],
                       normalize: str | None = None) -> list[float]:
    """Total log-probability of each candidate given the context (see `score_candidates`).

    `normalize`: None → Σ log P; "tokens" → per scored token; "chars" → per character (lm-eval
    `acc_norm`); "bytes" → per UTF-8 byte.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalize!r}; choose one of {NORMALIZATIONS}")
    return [s.normalized(normalize) for s in score_candidates(model, tokenizer, context, candidates)]


# --- ranking the next speaker of a held-out sample ----------------------------------------------------

def roster_of(sample: dict) -> list[str]:
    """The sample's characters: speakers in order of first appearance, then sheet-only names (sorted)."""
    names = list(dict.fromkeys(t["name"] for t in sample["turns"] if t.get("name")))
    sheets = sample.get("sheets")
    if sheets:
        extra = json.loads(sheets) if isinstance(sheets, str) else dict(sheets)
        names += sorted(n for n in extra if n not in names)
    return names


_SPEAKER_PROBE = "\x1aSPEAKER\x1a"  # a name no format prints by itself: marks where the name goes
_PROMPT_TAKES_EOS = "eos_token" in inspect.signature(generation_prompt).parameters


@dataclass(frozen=True)
class SpeakerPrompt:
    """A generation prompt split at the speaker's name: `context + candidate(name)` is exactly
    `formats.generation_prompt(…, speaker=name)`."""
    context: str     # BOS, system, earlier turns, separator, the model header (`[INST]model\n`)
    name_tail: str   # what the format writes after the name up to where the prompt stops (`:`)

    def candidate(self, name: str) -> str:
        return name + self.name_tail


def speaker_prompt(sample: dict, fmt: ChatFormat, bos_token: str | None, upto: int, first: int = 0,
                   eos_token: str | None = None) -> SpeakerPrompt:
    """The prompt for the speaker of turn `upto`, from system + turns[first:upto], split at the name.

    Built by `formats.generation_prompt` with a probe name, so it follows the format (content or
    header names, custom formats) without restating it; formats that print no speaker name raise.
    """
    if not 0 <= first <= upto <= len(sample["turns"]):
        raise ValueError(f"need 0 <= first ({first}) <= upto ({upto}) <= {len(sample['turns'])}")
    window = dict(sample, turns=list(sample["turns"][first:upto]))
    kwargs = {"eos_token": eos_token} if _PROMPT_TAKES_EOS and eos_token is not None else {}
    text = generation_prompt(window, fmt, bos_token, upto - first, _SPEAKER_PROBE, **kwargs)
    at = text.rfind(_SPEAKER_PROBE)
    if at < 0:
        raise ValueError(f"format {fmt.name!r} writes no speaker name before a model turn: "
                         "speaker selection cannot be scored")
    return SpeakerPrompt(text[:at], text[at + len(_SPEAKER_PROBE):])


def _rank(scores: Sequence[float], index: int) -> int:
    """1 + the number of candidates scoring strictly higher than candidate `index`."""
    return 1 + sum(1 for s in scores if s > scores[index])


@dataclass(frozen=True)
class SpeakerRanking:
    sample_id: str
    turn: int                     # index of the gold turn in sample["turns"]
    gold: str
    user_character: str
    names: tuple[str, ...]        # roster, in scoring order
    logprobs: tuple[float, ...]   # Σ log P(`Name:` | context + model header)
    norm_scores: tuple[float, ...]  # logprobs / characters of `Name:` (lm-eval acc_norm)
    rank: int | None              # 1-based rank of the gold speaker; None if not in the roster
    rank_norm: int | None
    predicted: str                # top-scoring name
    predicted_norm: str
    first_turn: int               # first turn kept in the context (> 0 when older turns were cut to fit)

    @property
    def correct(self) -> bool:
        return self.rank == 1

    @property
    def top_is_user(self) -> bool:
        """The top pick is the user's (human-owned) character: the model would speak for the user."""
        return self.predicted == self.user_character

    @property
    def top_is_user_norm(self) -> bool:
        return self.predicted_norm == self.user_character


def rank_speakers(model, tokenizer, sample: dict, fmt: ChatFormat, turn: int,
                  roster: Sequence[str] | None = None, first_turn: int = 0) -> SpeakerRanking:
    """Score every roster name as the speaker of `sample["turns"][turn]` (a gold model turn).

    Context = system + turns[first_turn:turn] + separator + model header, candidates = each roster
    name's header `Name:` (both from `speaker_prompt`: the format's `generation_prompt` split at the
    name). Roster default `roster_of(sample)`, the user's character included, so picking a
    human-owned character is measurable. Ranks count strictly better candidates (ties favour gold).
    """
    if not 0 <= first_turn <= turn < len(sample["turns"]):
        raise ValueError(f"need 0 <= first_turn ({first_turn}) <= turn ({turn}) < {len(sample['turns'])}")
    gold = sample["turns"][turn]["name"]
    names = list(dict.fromkeys(roster if roster is not None else roster_of(sample)))
    if not names:
        raise ValueError("empty roster")
    prompt = speaker_prompt(sample, fmt, tokenizer.bos_token, turn, first_turn, tokenizer.eos_token)
    scores = score_candidates(model, tokenizer, prompt.context, [prompt.candidate(n) for n in names])
    raw = [s.logprob for s in scores]
    norm = [s.normalized("chars") for s in scores]
    gold_index = names.index(gold) if gold in names else None
    return SpeakerRanking(
        sample_id=sample.get("sample_id", ""), turn=turn, gold=gold,
        user_character=sample.get("user_character", ""),
        names=tuple(names), logprobs=tuple(raw), norm_scores=tuple(norm),
        rank=None if gold_index is None else _rank(raw, gold_index),
        rank_norm=None if gold_index is None else _rank(norm, gold_index),
        predicted=names[max(range(len(names)), key=raw.__getitem__)],
        predicted_norm=names[max(range(len(names)), key=norm.__getitem__)],
        first_turn=first_turn,
    )


def fitting_first_turn(sample: dict, fmt: ChatFormat, tokenizer, turn: int,
                       max_context_tokens: int) -> int | None:
    """Smallest `first` such that `speaker_prompt(sample, …, turn, first).context` fits the token budget.

    Older turns are dropped (the system prompt stays), as training windows do; None if even the
    context with no earlier turn does not fit. Binary search: the length only shrinks as `first` grows.
    """
    def fits(first: int) -> bool:
        text = speaker_prompt(sample, fmt, tokenizer.bos_token, turn, first, tokenizer.eos_token).context
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_context_tokens

    if fits(0):
        return 0
    if not fits(turn):
        return None
    lo, hi = 0, turn  # fits(lo) is False, fits(hi) is True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def rank_model_turns(model, tokenizer, sample: dict, fmt: ChatFormat, max_context_tokens: int | None = None,
                     roster: Sequence[str] | None = None, min_history: int = 1) -> list[SpeakerRanking]:
    """`rank_speakers` for every model turn with at least `min_history` earlier turns.

    With `max_context_tokens`, older turns are cut to fit (`fitting_first_turn`); turns whose context
    cannot fit at all are skipped.
    """
    names = list(roster) if roster is not None else roster_of(sample)
    out = []
    for k, t in enumerate(sample["turns"]):
        if t["role"] != "model" or k < max(1, min_history):
            continue
        first = 0
        if max_context_tokens is not None:
            first = fitting_first_turn(sample, fmt, tokenizer, k, max_context_tokens)
            if first is None:
                continue
        out.append(rank_speakers(model, tokenizer, sample, fmt, k, names, first))
    return out


# --- baselines over the sequence of earlier speakers ---------------------------------------------------

def _finish(order: list[str], candidates: Iterable[str] | None) -> list[str]:
    """Keep `order` restricted to `candidates` (if given), then unseen candidates in their given order."""
    if candidates is None:
        return order
    allowed = list(dict.fromkeys(candidates))
    allowed_set = set(allowed)
    kept = [n for n in order if n in allowed_set]
    kept_set = set(kept)
    return kept + [n for n in allowed if n not in kept_set]


def baseline_most_recent_other(history: Sequence[str], candidates: Iterable[str] | None = None) -> list[str]:
    """Ranking by recency, skipping the last speaker: the most recent speaker other than `history[-1]`
    first (the one the last speaker answered), then earlier speakers by recency, then the last speaker
    itself, then never-seen candidates. SillyTavern's natural order without its talkativeness rolls."""
    if not history:
        return _finish([], candidates)
    by_recency = list(dict.fromkeys(reversed(history)))  # most recent first
    order = by_recency[1:] + by_recency[:1]
    return _finish(order, candidates)


def baseline_round_robin(history: Sequence[str], candidates: Iterable[str] | None = None) -> list[str]:
    """Ranking by the cycle of first appearance: the speaker after `history[-1]` in that cycle first,
    then the following ones, the last speaker last; never-seen candidates at the end."""
    cycle = list(dict.fromkeys(history))
    if not cycle:
        return _finish([], candidates)
    start = cycle.index(history[-1]) + 1
    order = [cycle[(start + j) % len(cycle)] for j in range(len(cycle))]
    return _finish(order, candidates)


def baseline_most_frequent(history: Sequence[str], candidates: Iterable[str] | None = None) -> list[str]:
    """Ranking by number of turns so far (descending), ties broken by recency (more recent first);
    never-seen candidates at the end."""
    counts: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    for i, name in enumerate(history):
        counts[name] = counts.get(name, 0) + 1
        last_seen[name] = i
    order = sorted(counts, key=lambda n: (-counts[n], -last_seen[n]))
    return _finish(order, candidates)


BASELINES = {
    "most_recent_other": baseline_most_recent_other,
    "round_robin": baseline_round_robin,
    "most_frequent": baseline_most_frequent,
}


def rank_in(gold: str, ranking: Sequence[str]) -> int | None:
    """1-based position of `gold` in a ranking; None when absent (counts as a miss)."""
    return ranking.index(gold) + 1 if gold in ranking else None


def baseline_ranks(speakers: Sequence[str], targets: Iterable[int],
                   candidates: Iterable[str] | None = None) -> dict[str, list[int | None]]:
    """For each baseline, the rank of `speakers[k]` given `speakers[:k]`, for each target index k."""
    cands = None if candidates is None else list(candidates)
    targets = list(targets)
    return {name: [rank_in(speakers[k], fn(speakers[:k], cands)) for k in targets]
            for name, fn in BASELINES.items()}


# --- metrics ---------------------------------------------------------------------------------------------

def speaker_metrics(ranks: Iterable[int | None]) -> dict:
    """`{n, accuracy, mrr}`: accuracy = (1/n) Σ [rank = 1]; MRR = (1/n) Σ 1/rank, a None rank counting 0.
    nan for no ranks."""
    items = list(ranks)
    n = len(items)
    if not n:
        return {"n": 0, "accuracy": math.nan, "mrr": math.nan}
    if any(r is not None and r < 1 for r in items):
        raise ValueError("ranks are 1-based")
    return {"n": n, "accuracy": sum(1 for r in items if r == 1) / n,
            "mrr": sum(1.0 / r for r in items if r is not None) / n}


def summarize_rankings(rankings: Sequence[SpeakerRanking]) -> dict:
    """Headline speaker-selection numbers: accuracy, acc_norm, MRR, MRR_norm, and the rate of picking the
    user's (human-owned) character with raw / normalised scores."""
    raw = speaker_metrics(r.rank for r in rankings)
    norm = speaker_metrics(r.rank_norm for r in rankings)
    n = len(rankings)
    return {"n": n, "accuracy": raw["accuracy"], "acc_norm": norm["accuracy"], "mrr": raw["mrr"],
            "mrr_norm": norm["mrr"],
            "user_pick_rate": sum(r.top_is_user for r in rankings) / n if n else math.nan,
            "user_pick_rate_norm": sum(r.top_is_user_norm for r in rankings) / n if n else math.nan}
