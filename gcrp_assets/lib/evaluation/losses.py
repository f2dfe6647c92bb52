"""Teacher-forced, token-weighted losses per row, and by role of the predicted token, in one forward pass.

The LM head runs only where a token is scored. The base arm is the same PEFT model with the adapter
disabled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gcrp_assets.lib.formats.tokenization import IGNORE
from gcrp_assets.lib.evaluation.roles import OTHER, ROLE_NAMES


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

    from gcrp_assets.lib.training.data import collate

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
