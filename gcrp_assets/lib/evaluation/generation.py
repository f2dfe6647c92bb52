"""Generations from held-out contexts, batched, with stop strings off and the stops-on reply derived.

Greedy and K seeded samples per context with the model cards' sampling settings (temperature, min_p),
left-padded batches, one prefill per context shared by its greedy and sampled continuations; a draw
depends only on its context's seed (Gumbel-max with per-context noise), not on batching. What a
front-end with the format's stop strings shows is the continuation cut before the first stop string
(`stops_on`): exact, because generation is causal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gcrp_assets.lib.formats.chat_format import ChatFormat, generation_prompt
from gcrp_assets.lib.evaluation.losses import backbone_and_head, model_device


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
    from gcrp_assets.lib.evaluation.speakers import roster_of

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
                   batch_size: int = 4, eos_token_ids: list[int] | None = None,
                   progress=None) -> list[list[Continuation]]:
    """For each prompt: [greedy continuation] (if `greedy`) + `n_samples` sampled continuations.

    Prompts are tokenized as text (no special tokens added: the format writes its BOS), sorted by length
    and run `batch_size` at a time, left-padded with an attention mask and per-row positions. Each
    prompt is prefilled once; its key/value cache is repeated for its greedy and sampled rows. Sampling
    uses temperature and min_p (`sample_next`) with uniform noise from a `torch.Generator` seeded by
    `seeds[i]` (default: the prompt's index), drawn per prompt and step, so a prompt's samples do not
    depend on the batch size or on the other prompts; base and adapter get the same seeds. Stop strings
    are off: a row ends at an EOS token (`eos_token_ids`, default the tokenizer's) or max_new_tokens.
    `progress(prompts done, prompts, tokens generated)` after each batch.
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
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order), sum(len(t) for t in tokens))
    return results  # type: ignore[return-value]


def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, bool]:
    """Greedy continuation of `prompt` (stop strings off), and whether it ran into max_new_tokens."""
    [[c]] = generate_batch(model, tokenizer, [prompt], max_new_tokens=max_new_tokens)
    return c.text, c.hit_cap


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
