"""Held-out evaluation: base model vs base + adapter, in one model load.

- Teacher-forced, token-weighted loss on model turns (the same labels as training), and from the
  same forward pass the loss per *role* of the target token (`role_mask`): model text, user text,
  the speaker name of a model turn, the end-of-turn marker. The base arm is the same PEFT model
  with the adapter disabled.
- Generations from held-out contexts (`generate_batch`): greedy and K seeded samples per context
  with the model cards' sampling settings (temperature, min_p), left-padded batches, one prefill
  per context shared by its greedy and sampled continuations. They run with stop strings *off*;
  what a front-end with the format's stop strings shows is derived exactly by cutting that
  continuation before the first stop string (`stops_on`).
- Detectors on a continuation: impersonation of the user's character, turns for other
  characters (`speaker_headers`), and the reply as shown with stops on.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field

from gcrp_assets.lib.formats import ChatFormat, Rendered, generation_prompt
from gcrp_assets.lib.tokenization import IGNORE

# --- roles of tokens ---------------------------------------------------------------------------------

OTHER, MODEL_TEXT, MODEL_NAME, MODEL_END, USER_TEXT, USER_NAME, USER_END = range(7)
ROLE_NAMES = ("other", "model_text", "model_name", "model_end", "user_text", "user_name", "user_end")
# Where a token overlaps several spans it takes the first of these (the terminator's first token, often
# merged with the reply's last characters, such as `.[` in `….[/INST]`, counts as end of turn).
_PRIORITY = (MODEL_END, USER_END, MODEL_NAME, USER_NAME, MODEL_TEXT, USER_TEXT)


def role_spans(rendered: Rendered, fmt: ChatFormat) -> list[tuple[int, int, int]]:
    """Character spans `(start, end, role)` of a rendered sample, sorted by start, disjoint.

    From the blocks' content spans (`formats.render`): a turn's message text is MODEL_TEXT or
    USER_TEXT; its name slot (the name and what the format writes between it and the text, `Name: `)
    MODEL_NAME / USER_NAME; its end of turn MODEL_END / USER_END: the characters after the text up to
    the block's end (terminator such as `[/INST]` or `<|im_end|>`, and an EOS the format appends),
    or, for formats without a terminator (`herrsimian`), the next block's separator and the marker
    every turn header starts with (`\\n\\n::::`, the format's stop string). Everything else (BOS,
    system prompt, role headers, separators) is OTHER, i.e. not in any span.
    """
    heads = [p.lstrip("\n") for p in fmt.role_prefix.values()]
    common = _common_prefix(heads) if heads else ""
    spans: list[tuple[int, int, int]] = []
    blocks = rendered.blocks
    for i, block in enumerate(blocks):
        if block.kind not in ("user", "model") or not block.content:
            continue
        model = block.kind == "model"
        body_start, body_end = block.content[-1]
        if len(block.content) > 1:
            spans.append((block.content[0][0], body_start, MODEL_NAME if model else USER_NAME))
        spans.append((body_start, body_end, MODEL_TEXT if model else USER_TEXT))
        end_role = MODEL_END if model else USER_END
        if block.end > body_end:
            spans.append((body_end, block.end, end_role))
        elif i + 1 < len(blocks):
            following = blocks[i + 1]
            text = rendered.text[following.start:following.end]
            sep = fmt.separator if text.startswith(fmt.separator) else ""
            width = len(sep) + (len(common) if text[len(sep):].startswith(common) else 0)
            if width:
                spans.append((following.start, following.start + width, end_role))
    spans = [s for s in spans if s[1] > s[0]]
    spans.sort()
    return spans


def _common_prefix(texts: list[str]) -> str:
    out = texts[0]
    for t in texts[1:]:
        while not t.startswith(out):
            out = out[:-1]
    return out


def role_mask(rendered: Rendered, fmt: ChatFormat, offsets: list[tuple[int, int]]) -> list[int]:
    """The role of every token (`ROLE_NAMES` index), from its character span `offsets[i]` in `rendered.text`
    (the tokenizer's offset mapping, as `tokenization.encode_rendered` returns).

    A token takes the highest-priority role among the spans of `role_spans` it overlaps (end of turn,
    then name, then text); a token overlapping none, or with an empty span (special tokens such as
    BOS), is OTHER.
    """
    spans = role_spans(rendered, fmt)
    starts = [s[0] for s in spans]
    rank = {role: k for k, role in enumerate(_PRIORITY)}
    out = []
    for a, b in offsets:
        role = OTHER
        if b > a:
            j = bisect.bisect_right(starts, a) - 1
            j = max(j, 0)
            best = None
            while j < len(spans) and spans[j][0] < b:
                s, e, r = spans[j]
                if e > a and (best is None or rank[r] < rank[best]):
                    best = r
                j += 1
            role = OTHER if best is None else best
        out.append(role)
    return out


# --- teacher-forced losses -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LossTotals:
    nll: float
    tokens: int

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")


@dataclass
class RowScore:
    """Summed NLL (nats) and token counts of one row: model-turn labels, and per role of the target token."""
    nll: float
    tokens: int
    roles: dict[str, tuple[float, int]] = field(default_factory=dict)


def per_row_scores(model, rows: list[dict], pad_id: int, batch_size: int = 4,
                   roles: list[list[int] | None] | None = None) -> list[RowScore]:
    """One forward pass per batch: the NLL of every labelled token (the model-turn loss, as training) and,
    where `roles[i]` is given (one role per token of row i, `role_mask`), of every token by its role.

    Position t predicts token t+1, so a token's role is the role of the *predicted* token. The LM head
    is applied only where something is scored (labels or a role other than OTHER).
    """
    import torch
    import torch.nn.functional as F

    from gcrp_assets.lib.training_data import collate

    out: list[RowScore] = []
    model.eval()
    backbone, head = backbone_and_head(model)
    device = model_device(model)
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            batch = collate(chunk, pad_id)
            width = batch["input_ids"].shape[1]
            role_ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for j in range(len(chunk)):
                r = roles[i + j] if roles is not None else None
                if r is not None:
                    role_ids[j, :len(r)] = torch.tensor(r, dtype=torch.long)
            hidden = backbone(input_ids=batch["input_ids"].to(device),
                              attention_mask=batch["attention_mask"].to(device)).last_hidden_state
            labels = batch["labels"][:, 1:]
            targets = batch["input_ids"][:, 1:]
            target_roles = role_ids[:, 1:]
            labelled = labels != IGNORE
            scored = labelled | (target_roles != OTHER)
            # The vocabulary projection only where something is scored: most tokens are masked context
            # (system prompt), and the 49k-wide logits of every position would dominate time and memory.
            logits = head(hidden[:, :-1, :][scored.to(device)]).float()
            nll = F.cross_entropy(logits, targets[scored].to(device), reduction="none").double().cpu()
            row_of = scored.nonzero()[:, 0]
            is_labelled = labelled[scored]
            role_of = target_roles[scored]
            for j in range(len(chunk)):
                mine = row_of == j
                lab = mine & is_labelled
                score = RowScore(float(nll[lab].sum()), int(lab.sum()))
                if roles is not None and roles[i + j] is not None:
                    for code, name in enumerate(ROLE_NAMES):
                        if code == OTHER:
                            continue
                        sel = mine & (role_of == code)
                        score.roles[name] = (float(nll[sel].sum()), int(sel.sum()))
                out.append(score)
    return out


def per_row_nll(model, rows: list[dict], pad_id: int, batch_size: int = 4) -> list[tuple[float, int]]:
    """(summed NLL in nats, trained-token count) for each row, in row order."""
    return [(s.nll, s.tokens) for s in per_row_scores(model, rows, pad_id, batch_size)]


def backbone_and_head(model):
    """The decoder stack and the LM head of a (PEFT-wrapped) causal LM; LoRA layers stay in place."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        import torch
        return torch.device("cpu")


def totals(pairs: list[tuple[float, int]]) -> LossTotals:
    return LossTotals(sum(p[0] for p in pairs), sum(p[1] for p in pairs))


# --- generation contexts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationCase:
    sample_id: str
    thread_key: str
    speaker: str
    user_character: str
    prompt: str
    human_reply: str
    turn: int = -1
    roster: tuple[str, ...] = ()
    history: tuple[str, ...] = ()   # texts of the turns before the gold reply


def generation_cases(samples: list[dict], fmt: ChatFormat, tokenizer, max_prompt_tokens: int, limit: int,
                     per_sample: int = 0) -> list[GenerationCase]:
    """Held-out contexts: gold model turns (k > 0) whose prompt fits `max_prompt_tokens`.

    Taken round-robin over the samples, latest fitting turn first: one per sample, then a second per
    sample, and so on, up to `limit` (and at most `per_sample` per sample when > 0). Deterministic.
    """
    from gcrp_assets.lib.speaker_selection import roster_of

    queues = []
    for sample in samples:
        turns = sample["turns"]
        queues.append([k for k in range(len(turns) - 1, 0, -1) if turns[k]["role"] == "model"])
    taken = [0] * len(samples)
    cases: list[GenerationCase] = []
    while len(cases) < limit and any(queues):
        for s, sample in enumerate(samples):
            if len(cases) >= limit:
                break
            while queues[s] and (per_sample <= 0 or taken[s] < per_sample):
                k = queues[s].pop(0)
                turns = sample["turns"]
                prompt = generation_prompt(sample, fmt, tokenizer.bos_token, k, turns[k]["name"])
                if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= max_prompt_tokens:
                    cases.append(GenerationCase(sample["sample_id"], sample["thread_key"], turns[k]["name"],
                                                sample["user_character"], prompt, turns[k]["text"], k,
                                                tuple(roster_of(sample)), tuple(t["text"] for t in turns[:k])))
                    taken[s] += 1
                    break
            if per_sample > 0 and taken[s] >= per_sample:
                queues[s] = []
    return cases


# --- batched generation ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Continuation:
    text: str        # decoded new tokens, special tokens kept (an EOS shows as its text)
    n_tokens: int
    hit_cap: bool    # reached max_new_tokens without EOS
    stopped_by_eos: bool
    ids: tuple[int, ...] = ()


def sample_next(logits, temperature: float, min_p: float, noise):
    """Tokens drawn from softmax(logits / temperature) restricted to p >= min_p · max p (min-p sampling),
    by the Gumbel-max trick with the given uniform `noise` (same shape as `logits`): exact sampling whose
    randomness comes only from `noise`, so a draw depends on its own seed, not on the batch it ran in."""
    import torch

    scaled = logits.float() / max(temperature, 1e-6)
    logp = torch.log_softmax(scaled, dim=-1)
    if min_p > 0:
        threshold = logp.max(dim=-1, keepdim=True).values + math.log(min_p)
        logp = logp.masked_fill(logp < threshold, float("-inf"))
    gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-7)))
    return torch.argmax(logp + gumbel, dim=-1)


def generate_batch(model, tokenizer, prompts: list[str], *, max_new_tokens: int, n_samples: int = 0,
                   greedy: bool = True, temperature: float = 1.0, min_p: float = 0.0, seeds: list[int] | None = None,
                   batch_size: int = 4, eos_token_ids: list[int] | None = None) -> list[list[Continuation]]:
    """For each prompt: [greedy continuation] (if `greedy`) + `n_samples` sampled continuations.

    Prompts are tokenized as text (no special tokens added: the format writes its BOS), sorted by length
    and run `batch_size` at a time, left-padded with an attention mask and per-row positions. Each
    prompt is prefilled once; its key/value cache is repeated for its greedy and sampled rows. Sampling
    uses temperature and min_p (`sample_next`) with uniform noise from a `torch.Generator` seeded by
    `seeds[i]` (default: the prompt's index), drawn per prompt and step, so a prompt's samples do not
    depend on the batch size or on the other prompts; base and adapter get the same seeds. Stop strings
    are off: a row ends at an EOS token (`eos_token_ids`, default the tokenizer's) or max_new_tokens.
    """
    import torch

    rows_per = int(bool(greedy)) + int(n_samples)
    if rows_per < 1:
        raise ValueError("nothing to generate: greedy is off and n_samples is 0")
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    eos = set(eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id])
    eos.discard(None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    backbone, head = backbone_and_head(model)
    device = model_device(model)
    results: list[list[Continuation] | None] = [None] * len(prompts)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, i in enumerate(chunk):
                ids[j, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[j, width - len(encoded[i]):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = backbone(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), use_cache=True)
            cache = out.past_key_values
            last = out.last_hidden_state[:, -1, :]
            if rows_per > 1:
                cache.batch_repeat_interleave(rows_per)
                last = last.repeat_interleave(rows_per, dim=0)
                mask = mask.repeat_interleave(rows_per, dim=0)
                positions = positions.repeat_interleave(rows_per, dim=0)
            n_rows = len(chunk) * rows_per
            greedy_row = torch.tensor([greedy and r % rows_per == 0 for r in range(n_rows)])
            generators = [torch.Generator().manual_seed(int(seeds[i])) for i in chunk]
            position = positions[:, -1] + 1
            tokens = [[] for _ in range(n_rows)]
            done = torch.zeros(n_rows, dtype=torch.bool)
            mask = mask.to(device)
            for _step in range(max_new_tokens):
                logits = head(last).float().cpu()
                choice = torch.argmax(logits, dim=-1)
                if not bool(greedy_row.all()):
                    # Noise per prompt and step for its sampled rows only, so the samples are the same with
                    # greedy on or off; greedy rows get a placeholder they ignore.
                    parts = []
                    for g in generators:
                        if greedy:
                            parts.append(torch.full((1, logits.shape[-1]), 0.5))
                        parts.append(torch.rand((n_samples, logits.shape[-1]), generator=g))
                    noise = torch.cat(parts)
                    sampled = sample_next(logits, temperature, min_p, noise)
                    choice = torch.where(greedy_row, choice, sampled)
                for r in range(n_rows):
                    if not done[r]:
                        tokens[r].append(int(choice[r]))
                        if int(choice[r]) in eos:
                            done[r] = True
                if bool(done.all()):
                    break
                feed = torch.where(done, torch.full_like(choice, pad_id), choice)
                mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=mask.dtype, device=device)], dim=1)
                step = backbone(input_ids=feed[:, None].to(device), attention_mask=mask,
                                position_ids=position[:, None].to(device), past_key_values=cache, use_cache=True)
                cache = step.past_key_values
                last = step.last_hidden_state[:, -1, :]
                position = position + 1
            for j, i in enumerate(chunk):
                conts = []
                for r in range(j * rows_per, (j + 1) * rows_per):
                    toks = tokens[r]
                    eos_hit = bool(toks) and toks[-1] in eos
                    conts.append(Continuation(tokenizer.decode(toks, skip_special_tokens=False), len(toks),
                                              not eos_hit and len(toks) >= max_new_tokens, eos_hit, tuple(toks)))
                results[i] = conts
    return results  # type: ignore[return-value]


def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, bool]:
    """Greedy continuation of `prompt` (stop strings off), and whether it ran into max_new_tokens."""
    [[c]] = generate_batch(model, tokenizer, [prompt], max_new_tokens=max_new_tokens)
    return c.text, c.hit_cap


# --- stops and detectors ---------------------------------------------------------------------------------

def stop_markers(fmt: ChatFormat, eos_token: str | None = None) -> list[str]:
    """What ends a reply for a front-end: the format's stop strings, its end-of-turn terminator (SillyTavern
    adds instruct sequences as stop strings) and the EOS token's text."""
    return [m for m in dict.fromkeys((*fmt.stop_strings, fmt.turn_suffix, eos_token or "")) if m]


def stops_on(continuation: str, fmt: ChatFormat, eos_token: str | None = None) -> tuple[str, bool]:
    """(the reply a front-end shows with the stop strings on, whether a stop fired).

    Exact for a continuation generated with stops off: stop strings act on the decoded text after each
    token, so generation with them on emits the same tokens up to the one that completes the first stop
    string (greedy is deterministic; the seeded sampler's draw at a step depends only on the tokens
    before it), and the front-end shows the text before that stop string.
    """
    hits = [continuation.find(m) for m in stop_markers(fmt, eos_token) if m in continuation]
    if not hits:
        return continuation, False
    return continuation[:min(hits)], True


def cut_reply(continuation: str, fmt: ChatFormat) -> tuple[str, str]:
    """(the reply up to its terminator or first stop string, what followed)."""
    reply, _ = stops_on(continuation, fmt)
    return reply, continuation[len(reply):]


def _header_pattern(names, fmt: ChatFormat) -> re.Pattern | None:
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        return None
    heads = sorted({re.escape(p.lstrip("\n")) for p in fmt.role_prefix.values() if p.strip()}, key=len, reverse=True)
    lead = "|".join(["^", "\n", *heads])
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?:{lead})[ \t]*(?:\*\*)?(?P<name>{alternatives})(?:\*\*)?[ \t]*:", re.I)


def speaker_headers(text: str, names, fmt: ChatFormat) -> list[tuple[int, str]]:
    """`(offset, name)` of every speaker header `Name:` for one of `names` in `text`: at the start of a line
    (optionally in `**bold**`) or right after one of the format's role headers (`::::user:Name:`)."""
    pattern = _header_pattern(names, fmt)
    if pattern is None:
        return []
    canonical = {n.lower(): n for n in names if n}
    return [(m.start(), canonical.get(m.group("name").lower(), m.group("name"))) for m in pattern.finditer(text)]


def impersonation_offset(text: str, user_character: str, fmt: ChatFormat) -> int | None:
    """Character offset where a stop on the user's name (SillyTavern `\\n{user}:`) would fire in `text`, or None."""
    hits = speaker_headers(text, [user_character], fmt)
    return hits[0][0] if hits else None


def impersonates(continuation: str, user_character: str, fmt: ChatFormat) -> bool:
    """The continuation writes a turn for the user's character, inside the reply or after it (stops off)."""
    return impersonation_offset(continuation, user_character, fmt) is not None
