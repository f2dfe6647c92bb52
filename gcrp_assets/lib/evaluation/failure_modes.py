"""Failure modes measured teacher-forced on every held-out model turn, from the loss pass's forward pass.

At chosen points of an eval row (`Probe`: a token position and candidate continuations) the model scores
each candidate's log-probability given the row up to that point. The row's forward pass is the one the losses
already run (its key/value cache is kept); all candidates of all probes of a batch then go through ONE more
forward pass of a few hundred tokens, each candidate attending only to its own context (a 4-D attention mask
over the cache) and to its own earlier tokens, at the positions it would have in the row. So every model turn
is scored, not a sample of them, for about the cost of one extra short batch per row.

Per gold model turn (`turn_probes`):
- speaker selection: every roster name's `Name:` at the turn's name slot (context: the row up to the model
  header), ranked by log-probability; the rank of the gold speaker, and whether the top pick is the user's
  (human-owned) character;
- stop propensity: P(the format's end of turn, e.g. `[/INST]`, at the gold end of the reply text) — the rest,
  1 − P, is the mass on continuing the reply;
- impersonation propensity: at the same gold end, the mass on a line naming the human's character
  (`\\nAlice:`, what the impersonation detector and a front-end's `\\n{{user}}:` stop string look for) against
  the gold continuation up to the next speaker's name (end of turn, next header, `Bob:`):
  `P(imp) / (P(imp) + P(gold next))`.

`summarize` pools the turns per arm and compares the arms with a cluster bootstrap over threads of the
turn-weighted mean difference (`metrics.cluster_bootstrap_difference`: turns of one thread are not independent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gcrp_assets.lib.evaluation import metrics as em
from gcrp_assets.lib.evaluation.losses import Probe
from gcrp_assets.lib.evaluation import roles as rl
from gcrp_assets.lib.evaluation import speakers as ss

NAN = float("nan")


@dataclass(frozen=True)
class TurnProbes:
    """The probes of one gold model turn of a row (indices into the row's probe list; -1 = not measurable)."""
    sample_id: str
    thread_key: str
    turn: int
    names: tuple[str, ...] = ()     # the speaker probe's candidates, in roster order
    gold: str = ""
    user_character: str = ""
    history: tuple[str, ...] = ()   # speakers of the sample's earlier turns (the baselines' input)
    speaker: int = -1
    stop: int = -1
    impersonation: int = -1         # candidates: (the user's header line, the gold continuation)


def _align(text: str, ids: list[int], offsets: list[tuple[int, int]], char_pos: int, tokenizer,
           candidates: list[str]) -> Probe | None:
    """A probe at character `char_pos`: the context is the row's tokens before the first token that ends past
    it; that token's characters before `char_pos` (a token merging the reply's last characters with the
    terminator, `.[/`) are re-tokenized with each candidate, so the candidate is scored as one string with them."""
    at = next((i for i in range(1, len(ids)) if offsets[i][1] > char_pos), len(ids))
    start = offsets[at][0] if at < len(ids) else char_pos
    lead = text[min(start, char_pos):char_pos]
    seqs = tuple(tuple(tokenizer(lead + c, add_special_tokens=False)["input_ids"]) for c in candidates)
    if at < 1 or any(not s for s in seqs):
        return None
    return Probe(at, seqs)


def turn_probes(rendered, fmt, ids: list[int], offsets: list[tuple[int, int]], tokenizer, sample: dict,
                thread_key: str) -> tuple[list[Probe], list[TurnProbes]]:
    """Probes at every model turn of one rendered row (the row's own tokens `ids`, `offsets`), and which probe
    measures what for each turn. A turn that starts the row has no history in it: no speaker probe there."""
    text = rendered.text
    name_at = fmt.name_template.index("{name}") if "{name}" in fmt.name_template else 0
    roster = ss.roster_of(sample)
    speakers_all = [t.get("name", "") for t in sample["turns"]]
    user = sample.get("user_character") or ""
    ends = {s: e for s, e, role in rl.role_spans(rendered, fmt) if role == rl.MODEL_END}
    turn_blocks = [b for b in rendered.blocks if b.kind in ("user", "model")]
    probes: list[Probe] = []
    out: list[TurnProbes] = []

    def add(probe: Probe | None) -> int:
        if probe is None:
            return -1
        probes.append(probe)
        return len(probes) - 1

    def name_candidate(name: str) -> str:
        return fmt.name_prefix(name)[name_at:].rstrip(" ")

    for i, block in enumerate(turn_blocks):
        if block.kind != "model" or not block.content:
            continue
        k = block.turn
        gold = sample["turns"][k].get("name") or ""
        has_name = len(block.content) > 1 and fmt.names != "none"
        speaker = stop = imp = -1
        names: tuple[str, ...] = ()
        if has_name and i > 0 and k > 0 and roster:
            names = tuple(roster)
            speaker = add(_align(text, ids, offsets, block.content[0][0], tokenizer,
                                 [name_candidate(n) for n in names]))
        body_end = block.content[-1][1]
        if body_end in ends:
            stop = add(_align(text, ids, offsets, body_end, tokenizer, [text[body_end:ends[body_end]]]))
        following = turn_blocks[i + 1] if i + 1 < len(turn_blocks) else None
        if user and following is not None and len(following.content) > 1 and fmt.names != "none":
            next_name = sample["turns"][following.turn].get("name") or ""
            gold_end = following.content[0][0] + len(name_candidate(next_name))
            imp = add(_align(text, ids, offsets, body_end, tokenizer,
                             ["\n" + name_candidate(user), text[body_end:gold_end]]))
        if speaker >= 0 or stop >= 0 or imp >= 0:
            out.append(TurnProbes(sample.get("sample_id", ""), thread_key, k, names, gold, user,
                                  tuple(speakers_all[:k]), speaker, stop, imp))
    return probes, out


# --- per turn and pooled ---------------------------------------------------------------------------------

def turn_outcomes(turn: TurnProbes, logprobs: list[list[float]]) -> dict:
    """The measured quantities of one turn for one arm: `speaker_rank` (None: gold not in the roster),
    `speaker_top_is_user`, `stop_p`, `impersonation_share` = P(imp) / (P(imp) + P(gold next))."""
    out: dict = {}
    if turn.speaker >= 0:
        scores = logprobs[turn.speaker]
        if turn.gold in turn.names:
            g = turn.names.index(turn.gold)
            out["speaker_rank"] = 1 + sum(1 for s in scores if s > scores[g])
        else:
            out["speaker_rank"] = None
        out["speaker_top_is_user"] = turn.names[max(range(len(scores)), key=scores.__getitem__)] == turn.user_character
    if turn.stop >= 0:
        out["stop_p"] = math.exp(logprobs[turn.stop][0])
    if turn.impersonation >= 0:
        imp, gold = logprobs[turn.impersonation]
        out["impersonation_share"] = 1.0 / (1.0 + math.exp(gold - imp))
        out["impersonation_preferred"] = imp > gold
    return out


# Pooled per-turn quantities: key -> (value of one turn's outcomes, or None where not measured)
QUANTITIES = {
    "speaker_accuracy": lambda o: None if "speaker_rank" not in o else float(o["speaker_rank"] == 1),
    "speaker_mrr": lambda o: None if "speaker_rank" not in o else (1.0 / o["speaker_rank"] if o["speaker_rank"]
                                                                    else 0.0),
    "speaker_picks_user": lambda o: None if "speaker_top_is_user" not in o else float(o["speaker_top_is_user"]),
    "stop_probability": lambda o: o.get("stop_p"),
    "impersonation_share": lambda o: o.get("impersonation_share"),
    "impersonation_preferred": lambda o: None if "impersonation_preferred" not in o
    else float(o["impersonation_preferred"]),
}


def summarize(turns: list[TurnProbes], base: list[dict], adapter: list[dict], n_resamples: int = 10_000,
              seed: int = 0) -> dict:
    """Per quantity: the turn-weighted mean of each arm over every measured turn, their difference with a 95 %
    cluster-bootstrap CI over threads, n (turns) and threads; the speaker baselines' accuracy and MRR on the same
    turns."""
    out: dict = {}
    for key, value_of in QUANTITIES.items():
        sums: dict[str, list[float]] = {}
        for turn, b, a in zip(turns, base, adapter):
            vb, va = value_of(b), value_of(a)
            if vb is None or va is None:
                continue
            s = sums.setdefault(turn.thread_key, [0.0, 0.0, 0])
            s[0] += vb
            s[1] += va
            s[2] += 1
        keys = sorted(sums)
        n = sum(sums[k][2] for k in keys)
        if not n:
            out[key] = {"n": 0, "threads": 0, "base": NAN, "adapter": NAN, "delta": NAN, "ci_low": NAN,
                        "ci_high": NAN}
            continue
        diff, low, high = em.cluster_bootstrap_difference([sums[k][0] for k in keys], [sums[k][1] for k in keys],
                                                          [sums[k][2] for k in keys], n_resamples, seed)
        out[key] = {"n": n, "threads": len(keys), "base": sum(sums[k][0] for k in keys) / n,
                    "adapter": sum(sums[k][1] for k in keys) / n, "delta": diff, "ci_low": low, "ci_high": high}
    ranked = [t for t, b in zip(turns, base) if "speaker_rank" in b]
    baselines: dict[str, list] = {}
    for t in ranked:
        for name, ranks in ss.baseline_ranks(list(t.history) + [t.gold], [len(t.history)], t.names).items():
            baselines.setdefault(name, []).extend(ranks)
    out["speaker_baselines"] = {name: ss.speaker_metrics(r) for name, r in baselines.items()}
    return out
