"""Teacher-forced failure modes on every held-out model turn (lib/evaluation/failure_modes.py): the candidates
scored from the loss pass's key/value cache equal scoring each context + candidate alone, and the pooled
numbers pair the arms over threads."""

import math

import pytest

from gcrp_assets.lib.evaluation import failure_modes as fm
from gcrp_assets.lib.evaluation.losses import per_row_scores
from gcrp_assets.lib.evaluation.roles import MODEL_END, role_spans
from gcrp_assets.lib.evaluation.speakers import rank_speakers, score_candidates
from gcrp_assets.lib.formats.chat_format import FORMATS, get_format, render
from gcrp_assets.lib.formats.tokenization import encode_rendered
from gcrp_assets_tests.factories import SAMPLE

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def _plain(model, context, candidate):
    seq = torch.tensor([list(context) + list(candidate)])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=seq).logits[0].float(), dim=-1)
    return sum(float(logprobs[t - 1, seq[0, t]]) for t in range(len(context), seq.shape[1]))


def _row(fmt, tokenizer, sample=SAMPLE):
    rendered = render(sample, fmt, tokenizer.bos_token, eos_token=tokenizer.eos_token)
    ids, offsets = encode_rendered(tokenizer, rendered)
    return rendered, list(ids), [tuple(o) for o in offsets]


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_cached_probes_equal_scoring_each_context_alone(fmt_name, tiny_model, smol_tokenizer):
    fmt = get_format(fmt_name)
    rendered, ids, offsets = _row(fmt, smol_tokenizer)
    probes, turns = fm.turn_probes(rendered, fmt, ids, offsets, smol_tokenizer, SAMPLE, SAMPLE["thread_key"])
    other = dict(SAMPLE, turns=SAMPLE["turns"][:3])  # a second, shorter row in the same batch (right-padded)
    rendered2, ids2, offsets2 = _row(fmt, smol_tokenizer, other)
    probes2, _ = fm.turn_probes(rendered2, fmt, ids2, offsets2, smol_tokenizer, other, "d/t2")
    rows = [{"input_ids": ids2, "labels": [-100] * len(ids2)}, {"input_ids": ids, "labels": [-100] * len(ids)}]
    scores = per_row_scores(tiny_model, rows, pad_id=2, batch_size=2, probes=[probes2, probes])
    got = scores[1].probes
    model_turns = [k for k, t in enumerate(SAMPLE["turns"]) if t["role"] == "model"]
    assert [t.turn for t in turns] == model_turns
    blocks = {b.turn: b for b in rendered.blocks if b.kind == "model"}
    for t in turns:
        # speaker: the same numbers as the exact scorer that runs the whole context for each turn
        ranking = rank_speakers(tiny_model, smol_tokenizer, SAMPLE, fmt, t.turn, list(t.names))
        assert got[t.speaker] == pytest.approx(list(ranking.logprobs), abs=2e-4)
        body_end = blocks[t.turn].content[-1][1]
        context = rendered.text[:body_end]
        ends = {a: b for a, b, role in role_spans(rendered, fmt) if role == MODEL_END}
        if body_end in ends:
            [expected] = score_candidates(tiny_model, smol_tokenizer, context, [rendered.text[body_end:ends[body_end]]])
            assert got[t.stop][0] == pytest.approx(expected.logprob, abs=2e-4)
        else:
            assert t.stop == -1
        if t.impersonation >= 0:
            # the row's own tokens before the probe, then the reply's last characters re-tokenized with the
            # candidate (`."` + `\nSteve:`), scored by one plain forward pass
            probe = probes[t.impersonation]
            for c, seq in enumerate(probe.candidates):
                text = smol_tokenizer.decode(seq)
                assert text.endswith("\nSteve:" if c == 0 else rendered.text[body_end:body_end + 3]) or c == 1
                assert got[t.impersonation][c] == pytest.approx(_plain(tiny_model, ids[:probe.at], seq), abs=2e-4)
    assert all(not math.isnan(v) for p in scores[0].probes for v in p)
    # the probes leave the loss untouched
    plain = per_row_scores(tiny_model, rows, pad_id=2, batch_size=2)
    assert [s.nll for s in plain] == pytest.approx([s.nll for s in scores], abs=1e-6)


def test_turn_outcomes_read_the_candidates():
    turn = fm.TurnProbes("s", "t", 2, ("Steve", "Arty", "Sukuna"), "Arty", "Steve", ("Steve", "Arty"), 0, 1, 2)
    out = fm.turn_outcomes(turn, [[-1.0, -2.0, -0.5], [math.log(0.25)], [math.log(0.3), math.log(0.1)]])
    assert out["speaker_rank"] == 3 and not out["speaker_top_is_user"]
    assert out["stop_p"] == pytest.approx(0.25)
    assert out["impersonation_share"] == pytest.approx(0.75) and out["impersonation_preferred"]
    out = fm.turn_outcomes(turn, [[-0.1, -2.0, -0.5], [0.0], [-5.0, -1.0]])
    assert out["speaker_top_is_user"] and out["speaker_rank"] == 3


def test_pooled_numbers_are_turn_weighted_with_the_difference_inside_its_interval():
    turns, base, adapter = [], [], []
    for thread in range(6):
        for k in range(3 + thread):  # threads of different sizes: turn-weighted, not thread-weighted
            turns.append(fm.TurnProbes("s", f"t{thread}", k + 1, stop=0))
            base.append({"stop_p": 0.2 + 0.01 * thread})
            adapter.append({"stop_p": 0.5 + 0.02 * k})
    out = fm.summarize(turns, base, adapter, n_resamples=2000)["stop_probability"]
    n = len(turns)
    assert out["n"] == n and out["threads"] == 6
    assert out["adapter"] - out["base"] == pytest.approx(out["delta"])
    assert out["base"] == pytest.approx(sum(b["stop_p"] for b in base) / n)
    assert out["ci_low"] <= out["delta"] <= out["ci_high"] and out["ci_low"] > 0


def test_every_headline_interval_brackets_the_difference_printed_beside_it():
    """Losses, role losses and the teacher-forced failure modes: each CI in the headline is of its row's Δ."""
    import random

    from gcrp_assets.lib.evaluation import metrics as em
    from gcrp_assets.lib.evaluation.report import headline_table
    from gcrp_assets_tests.test_eval_report import _summary

    rng = random.Random(3)
    summary, _ = _summary()
    tokens = [rng.randint(20, 400) for _ in range(9)]
    base = [t * rng.uniform(2.5, 3.5) for t in tokens]
    adapter = [b - t * rng.uniform(-0.1, 0.5) for b, t in zip(base, tokens)]
    diff, low, high = em.cluster_bootstrap_difference(base, adapter, tokens, 2000)
    summary.update(model_turn_loss_base=sum(base) / sum(tokens), model_turn_loss_adapter=sum(adapter) / sum(tokens),
                   loss_delta=diff, loss_delta_ci_low=low, loss_delta_ci_high=high)
    role = summary["role_losses"]["user_text"]
    role.update(loss_base=3.0, loss_adapter=2.9, delta=-0.1, delta_ci_low=-0.2, delta_ci_high=0.05)
    turns, b_out, a_out = [], [], []
    for k in range(40):
        turns.append(fm.TurnProbes("s", f"t{k % 7}", k, ("A", "B"), "A", "B", ("B",), 0, 1, 2))
        b_out.append(fm.turn_outcomes(turns[-1], [[-1.0, -rng.uniform(0.5, 2)], [-rng.uniform(0.1, 3)],
                                                  [-rng.uniform(1, 4), -rng.uniform(1, 4)]]))
        a_out.append(fm.turn_outcomes(turns[-1], [[-1.0, -rng.uniform(0.8, 3)], [-rng.uniform(0.05, 1)],
                                                  [-rng.uniform(2, 5), -rng.uniform(0.5, 3)]]))
    summary["failure_modes"] = fm.summarize(turns, b_out, a_out, 2000)
    rows = headline_table(summary)
    with_ci = [r for r in rows if r["CI"].startswith("CI [")]
    assert len(with_ci) >= 8 and any("teacher-forced" in r["metric"] for r in with_ci)
    for r in with_ci:
        low, high = (float(x) for x in r["CI"][4:].split("]")[0].split(", "))
        assert low <= float(r["Δ"]) <= high, r
        assert float(r["Δ"]) == pytest.approx(float(r["adapter"]) - float(r["base"]), abs=2e-3)
