"""Held-out evaluation: base model vs base + adapter, in one model load.

- Teacher-forced, token-weighted loss on model turns (the same labels as training); the base arm
  is the same PEFT model with the adapter disabled.
- Greedy generations from held-out contexts, with the share that speak as the user's character
  (impersonation): a line-initial `UserName:` inside the reply, or the continuation opening the
  user's next turn right after the reply.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gcrp_assets.lib.formats import ChatFormat, generation_prompt
from gcrp_assets.lib.tokenization import IGNORE


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


def per_row_nll(model, rows: list[dict], pad_id: int, batch_size: int = 4) -> list[tuple[float, int]]:
    """(summed NLL in nats, trained-token count) for each row, in row order."""
    import torch
    import torch.nn.functional as F

    from gcrp_assets.lib.training_data import collate

    out: list[tuple[float, int]] = []
    model.eval()
    backbone, head = backbone_and_head(model)
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i:i + batch_size], pad_id)
            hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            targets = batch["labels"][:, 1:]
            mask = targets != IGNORE
            # The vocabulary projection only where a label is scored: most tokens are masked context,
            # and the 49k-wide logits of every position would dominate time and memory.
            logits = head(hidden[:, :-1, :][mask]).float()
            nll = F.cross_entropy(logits, targets[mask], reduction="none")
            row_of = mask.nonzero()[:, 0]
            for j in range(mask.shape[0]):
                out.append((float(nll[row_of == j].sum()), int(mask[j].sum())))
    return out


def backbone_and_head(model):
    """The decoder stack and the LM head of a (PEFT-wrapped) causal LM; LoRA layers stay in place."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def totals(pairs: list[tuple[float, int]]) -> LossTotals:
    return LossTotals(sum(p[0] for p in pairs), sum(p[1] for p in pairs))


@dataclass(frozen=True)
class GenerationCase:
    sample_id: str
    thread_key: str
    speaker: str
    user_character: str
    prompt: str
    human_reply: str


def generation_cases(samples: list[dict], fmt: ChatFormat, tokenizer, max_prompt_tokens: int, limit: int) -> list[GenerationCase]:
    """One context per held-out sample: the latest model turn whose prompt fits the budget."""
    cases = []
    for sample in samples:
        turns = sample["turns"]
        for k in range(len(turns) - 1, 0, -1):
            if turns[k]["role"] != "model":
                continue
            prompt = generation_prompt(sample, fmt, tokenizer.bos_token, k, turns[k]["name"])
            if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= max_prompt_tokens:
                cases.append(GenerationCase(sample["sample_id"], sample["thread_key"], turns[k]["name"],
                                            sample["user_character"], prompt, turns[k]["text"]))
                break
        if len(cases) >= limit:
            break
    return cases


def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, bool]:
    """Greedy continuation of `prompt` (stop strings off), and whether it ran into max_new_tokens."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    new = out[0, ids["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=False), len(new) >= max_new_tokens


def cut_reply(continuation: str, fmt: ChatFormat) -> tuple[str, str]:
    """(the reply up to its terminator or first stop string, what followed)."""
    ends = [continuation.find(s) for s in (*fmt.stop_strings, fmt.turn_suffix) if s and s in continuation]
    end = min(ends) if ends else len(continuation)
    return continuation[:end], continuation[end:]


def impersonates(continuation: str, user_character: str, fmt: ChatFormat) -> bool:
    reply, rest = cut_reply(continuation, fmt)
    header = re.compile(rf"(?:^|\n)\s*(?:\*\*)?{re.escape(user_character)}(?:\*\*)?\s*:", re.I)
    if header.search(reply):
        return True
    rest = rest[len(fmt.turn_suffix):] if fmt.turn_suffix and rest.startswith(fmt.turn_suffix) else rest
    rest = rest.lstrip("\n")
    user_block = fmt.role_prefix["user"].lstrip("\n")
    return rest.startswith(user_block) and rest[len(user_block):].lstrip().startswith(user_character)
