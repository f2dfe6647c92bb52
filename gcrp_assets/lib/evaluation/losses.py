"""Teacher-forced, token-weighted losses per row, and by role of the predicted token, in one forward pass.

The LM head runs only where a token is scored. The base arm is the same PEFT model with the adapter
disabled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

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


@dataclass(frozen=True)
class Probe:
    """Candidates scored after the row's first `at` tokens: `log P(candidate tokens | row[:at])` each."""
    at: int
    candidates: tuple[tuple[int, ...], ...]


@dataclass
class RowScore:
    """Summed NLL (nats) and token counts of one row: model-turn labels, and per role of the target token."""
    nll: float
    tokens: int
    roles: dict[str, tuple[float, int]] = field(default_factory=dict)
    probes: list[list[float]] = field(default_factory=list)   # [probe][candidate] log-probabilities


def per_row_scores(model, rows: list[dict], pad_id: int, batch_size: int = 4,
                   roles: list[list[int] | None] | None = None, probes: list[list] | None = None,
                   progress: Callable[[int, int, int], None] | None = None) -> list[RowScore]:
    """One forward pass per batch: the NLL of every labelled token (the model-turn loss, as training) and,
    where `roles[i]` is given (one role per token of row i, `role_mask`), of every token by its role; where
    `probes[i]` is given (`Probe`s of row i, `failure_modes.turn_probes`), the log-probability of each probe's
    candidates from the same pass's key/value cache (`probe_logprobs`). `progress(rows done, rows, tokens done)`
    after each batch.

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
            row_probes = [probes[i + j] if probes is not None and probes[i + j] else [] for j in range(len(chunk))]
            forward = backbone(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device), use_cache=any(row_probes))
            hidden = forward.last_hidden_state
            probed = probe_logprobs(backbone, head, forward, batch["input_ids"], row_probes, device) \
                if any(row_probes) else [[] for _ in chunk]
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
                score = RowScore(float(nll[lab].sum()), int(lab.sum()), probes=probed[j])
                if roles is not None and roles[i + j] is not None:
                    for code, name in enumerate(ROLE_NAMES):
                        if code == OTHER:
                            continue
                        sel = mine & (role_of == code)
                        score.roles[name] = (float(nll[sel].sum()), int(sel.sum()))
                out.append(score)
            if progress is not None:
                progress(min(i + batch_size, len(rows)), len(rows), int(batch["attention_mask"].sum()))
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


def probe_logprobs(backbone, head, out, batch_ids, probes: list[list[Probe]], device) -> list[list[list[float]]]:
    """For each row of a batch (its forward pass `out`, with `past_key_values`, over `batch_ids`), the
    log-probability of every candidate of every probe: `[row][probe][candidate]`.

    One forward pass over the concatenated candidates of every probe and row, right-padded to one width, with a
    boolean 4-D mask (a float one for eager attention): a candidate token attends to the row's cached keys
    before its probe's position and to its own candidate's earlier tokens; its position id is the position it
    would have in the row. The first candidate token is predicted by the row's own hidden state before `at`.
    """
    import torch

    width = batch_ids.shape[1]
    segments = []  # per row: [(probe index, candidate index, start in the query, length, at)]
    queries = []
    for row_probes in probes:
        segs, toks = [], []
        for p, probe in enumerate(row_probes):
            for c, seq in enumerate(probe.candidates):
                segs.append((p, c, len(toks), len(seq), probe.at))
                toks.extend(seq)
        segments.append(segs)
        queries.append(toks)
    results = [[[float("nan")] * len(p.candidates) for p in row_probes] for row_probes in probes]
    q = max((len(t) for t in queries), default=0)
    if q == 0:
        return results
    n = len(probes)
    ids = torch.zeros((n, q), dtype=torch.long)
    positions = torch.zeros((n, q), dtype=torch.long)
    allowed = torch.zeros((n, 1, q, width + q), dtype=torch.bool)
    allowed[:, 0, :, 0] = True  # padding queries attend to one key (no all-masked row), and are ignored
    for r, segs in enumerate(segments):
        if queries[r]:
            ids[r, :len(queries[r])] = torch.tensor(queries[r])
        for _, _, start, length, at in segs:
            for j in range(length):
                row = allowed[r, 0, start + j]
                row[:] = False
                row[:at] = True
                row[width + start:width + start + j + 1] = True
                positions[r, start + j] = at + j
    implementation = getattr(getattr(backbone, "config", None), "_attn_implementation", "sdpa")
    if implementation == "eager":
        mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    else:
        mask = allowed
    hidden = backbone(input_ids=ids.to(device), position_ids=positions.to(device), attention_mask=mask.to(device),
                      past_key_values=out.past_key_values, use_cache=True).last_hidden_state
    row_hidden = out.last_hidden_state
    # Gather the states that predict each candidate token: the row's state before `at` for the first token,
    # then the candidate's own states.
    states, targets, owners = [], [], []
    for r, segs in enumerate(segments):
        for p, c, start, length, at in segs:
            for j in range(length):
                states.append(row_hidden[r, at - 1] if j == 0 else hidden[r, start + j - 1])
                targets.append(queries[r][start + j])
                owners.append((r, p, c))
    logits = head(torch.stack(states)).float()
    logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(targets, device=logits.device)[:, None])[:, 0]
    totals: dict[tuple[int, int, int], float] = {}
    for owner, value in zip(owners, logp.double().cpu().tolist()):
        totals[owner] = totals.get(owner, 0.0) + value
    for (r, p, c), value in totals.items():
        results[r][p][c] = value
    return results
