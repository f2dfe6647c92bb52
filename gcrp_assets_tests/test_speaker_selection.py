import math

import pytest

from gcrp_assets.lib.formats.chat_format import FORMATS, generation_prompt, get_format
from gcrp_assets.lib.evaluation.speakers import (baseline_most_frequent, baseline_most_recent_other,
                                                 baseline_ranks, baseline_round_robin, candidate_logprobs,
                                                 fitting_first_turn, rank_in, rank_model_turns, rank_speakers,
                                                 roster_of, score_candidates, speaker_prompt, speaker_metrics,
                                                 summarize_rankings)
from gcrp_assets_tests.factories import SAMPLE

torch = pytest.importorskip("torch")

ROSTER = ["Steve", "Altair \"Arty\" Enzo", "Sukuna Gojo"]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def _reference_logprob(model, tokenizer, context, candidate):
    """Σ log P over the candidate's tokens, from one plain forward of context + candidate alone."""
    enc = tokenizer(context + candidate, add_special_tokens=False, return_offsets_mapping=True)
    first = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(context))
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logprobs[t - 1, ids[0, t]]) for t in range(first, ids.shape[1])), ids.shape[1] - first


class _BiasedHead(torch.nn.Module):
    def __init__(self, head, bias):
        super().__init__()
        self.head = head
        self.register_buffer("bias", bias)

    def forward(self, hidden):
        return self.head(hidden) + self.bias


class PreferTokens(torch.nn.Module):
    """The tiny Llama with a large logit bonus on chosen token ids: a model that strongly prefers them."""

    def __init__(self, lm, token_ids, boost=30.0):
        super().__init__()
        self.lm = lm
        bias = torch.zeros(lm.config.vocab_size)
        bias[list(token_ids)] = boost
        self.head = _BiasedHead(lm.get_output_embeddings(), bias)

    def get_decoder(self):
        return self.lm.get_decoder()

    def get_output_embeddings(self):
        return self.head


def _preferring(lm, tokenizer, name, others):
    own = set(tokenizer(f"{name}:", add_special_tokens=False)["input_ids"])
    shared = {i for other in others
              for i in tokenizer(f"{other}:", add_special_tokens=False)["input_ids"]}
    assert own - shared
    return PreferTokens(lm, own - shared)


# --- scoring ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_batched_scores_equal_scoring_each_candidate_alone(fmt_name, tiny_model, smol_tokenizer):
    prompt = speaker_prompt(SAMPLE, get_format(fmt_name), smol_tokenizer.bos_token, 2)
    context, candidates = prompt.context, [prompt.candidate(n) for n in ROSTER]
    assert candidates == [f"{n}:" for n in ROSTER]
    shared = score_candidates(tiny_model, smol_tokenizer, context, candidates)
    full_batch = score_candidates(tiny_model, smol_tokenizer, context, candidates, share_prefix=False)
    assert [s.candidate for s in shared] == candidates
    for score, other, candidate in zip(shared, full_batch, candidates):
        expected, n_tokens = _reference_logprob(tiny_model, smol_tokenizer, context, candidate)
        assert math.isfinite(score.logprob) and score.logprob < 0
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        assert other.logprob == pytest.approx(expected, abs=1e-4)
        assert score.n_tokens == n_tokens >= 1


def test_token_straddling_the_boundary_is_scored_with_the_candidate(tiny_model, smol_tokenizer):
    context, candidates = "<|im_start|>Bob said hel", ["lo there", "p me"]
    joint = smol_tokenizer(context + "lo there", add_special_tokens=False)["input_ids"]
    assert smol_tokenizer.decode(joint[-2:]) == " hello there"  # ` hel` + `lo` merge into one token
    scores = score_candidates(tiny_model, smol_tokenizer, context, candidates)
    for score, candidate in zip(scores, candidates):
        expected, n_tokens = _reference_logprob(tiny_model, smol_tokenizer, context, candidate)
        assert score.n_tokens == n_tokens
        assert score.logprob == pytest.approx(expected, abs=1e-4)
        # the batch (shared prefix) and the candidate scored alone by the same function agree
        alone = score_candidates(tiny_model, smol_tokenizer, context, [candidate])[0]
        assert alone.logprob == pytest.approx(score.logprob, abs=1e-4)
    assert scores[0].n_tokens == 2


def test_length_normalisation(tiny_model, smol_tokenizer):
    context = speaker_prompt(SAMPLE, get_format("inst"), smol_tokenizer.bos_token, 3).context
    candidates = ["Steve:", "Sukuna Gojo:"]
    raw = candidate_logprobs(tiny_model, smol_tokenizer, context, candidates)
    per_char = candidate_logprobs(tiny_model, smol_tokenizer, context, candidates, normalize="chars")
    scores = score_candidates(tiny_model, smol_tokenizer, context, candidates)
    per_token = candidate_logprobs(tiny_model, smol_tokenizer, context, candidates, normalize="tokens")
    assert per_char == pytest.approx([raw[0] / 6, raw[1] / 12])
    assert per_token == pytest.approx([r / s.n_tokens for r, s in zip(raw, scores)])
    with pytest.raises(ValueError):
        candidate_logprobs(tiny_model, smol_tokenizer, context, candidates, normalize="words")
    with pytest.raises(ValueError):
        score_candidates(tiny_model, smol_tokenizer, context, ["Steve:", ""])


def test_peft_wrapped_model_scores_through_its_base(tiny_model_dir, smol_tokenizer, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    context = speaker_prompt(SAMPLE, get_format("chatml"), smol_tokenizer.bos_token, 4).context
    candidates = [f"{n}:" for n in ROSTER]
    # LoRA B starts at zero: the adapter arm equals the base model.
    assert candidate_logprobs(peft_model, smol_tokenizer, context, candidates) == pytest.approx(
        candidate_logprobs(tiny_model, smol_tokenizer, context, candidates), abs=1e-4)


# --- ranking speakers ------------------------------------------------------------------------------------


def test_speaker_prompt_is_the_generation_prompt_split_at_the_name(smol_tokenizer):
    expected_context = {"inst": "[/INST]\n[INST]model\n", "chatml": "<|im_end|>\n<|im_start|>assistant\n",
                        "herrsimian": "\n\n::::assistant:"}
    for fmt in FORMATS.values():
        prompt = speaker_prompt(SAMPLE, fmt, smol_tokenizer.bos_token, 2)
        assert prompt.context.endswith(expected_context[fmt.name])
        assert prompt.context.startswith(smol_tokenizer.bos_token if fmt.add_bos else fmt.system_prefix)
        assert "Sukuna" not in prompt.context and "You're late." in prompt.context
        for name in ROSTER:
            assert prompt.candidate(name) == f"{name}:"
            assert prompt.context + prompt.candidate(name) == generation_prompt(
                SAMPLE, fmt, smol_tokenizer.bos_token, 2, name)
        cut = speaker_prompt(SAMPLE, fmt, smol_tokenizer.bos_token, 2, first=1)
        assert "Steve opened" not in cut.context and "You're late." in cut.context
        assert "You are involved in a roleplay" in cut.context  # the system prompt stays
    assert roster_of(SAMPLE) == ROSTER
    assert roster_of(dict(SAMPLE, sheets='{"Zed": "sheet", "Steve": "sheet"}')) == ROSTER + ["Zed"]


@pytest.mark.parametrize("fmt_name", sorted(FORMATS))
def test_crafted_model_ranks_its_preferred_name_first(fmt_name, tiny_model, smol_tokenizer):
    fmt = get_format(fmt_name)
    gold = SAMPLE["turns"][2]["name"]  # Sukuna Gojo
    prefers_gold = _preferring(tiny_model, smol_tokenizer, gold, [n for n in ROSTER if n != gold])
    ranking = rank_speakers(prefers_gold, smol_tokenizer, SAMPLE, fmt, 2)
    assert ranking.names == tuple(ROSTER)
    assert ranking.predicted == gold and ranking.rank == 1 and ranking.correct
    assert ranking.predicted_norm == gold and ranking.rank_norm == 1
    assert not ranking.top_is_user

    prefers_user = _preferring(tiny_model, smol_tokenizer, "Steve", [n for n in ROSTER if n != "Steve"])
    wrong = rank_speakers(prefers_user, smol_tokenizer, SAMPLE, fmt, 2)
    assert wrong.predicted == "Steve" and wrong.top_is_user
    assert wrong.rank > 1 and not wrong.correct
    summary = summarize_rankings([ranking, wrong])
    assert summary["accuracy"] == 0.5 and summary["user_pick_rate"] == 0.5
    assert summary["mrr"] == pytest.approx((1 + 1 / wrong.rank) / 2)


def test_rank_model_turns_cuts_old_turns_to_fit(tiny_model, smol_tokenizer):
    fmt = get_format("inst")
    full = rank_model_turns(tiny_model, smol_tokenizer, SAMPLE, fmt)
    assert [r.turn for r in full] == [1, 2, 4] and all(r.first_turn == 0 for r in full)
    assert all(all(math.isfinite(x) for x in r.logprobs) for r in full)
    assert all(r.rank in (1, 2, 3) for r in full)

    def length(first, turn=4):
        text = speaker_prompt(SAMPLE, fmt, smol_tokenizer.bos_token, turn, first).context
        return len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])

    budget = length(2)
    assert length(1) > budget
    assert fitting_first_turn(SAMPLE, fmt, smol_tokenizer, 4, budget) == 2
    assert fitting_first_turn(SAMPLE, fmt, smol_tokenizer, 4, length(4) - 1) is None
    cut = rank_model_turns(tiny_model, smol_tokenizer, SAMPLE, fmt, max_context_tokens=budget)
    assert {r.turn: r.first_turn for r in cut}[4] == 2


# --- baselines and metrics -------------------------------------------------------------------------------


def test_baselines_rank_by_their_rules():
    history = ["A", "B", "C", "D", "B"]
    assert baseline_most_recent_other(history) == ["D", "C", "A", "B"]
    assert baseline_round_robin(history) == ["C", "D", "A", "B"]
    assert baseline_most_frequent(history) == ["B", "D", "C", "A"]  # B twice; ties: most recent first
    # restricted to candidates (e.g. model-owned characters), unseen ones last in the given order
    assert baseline_most_recent_other(history, ["A", "E", "B"]) == ["A", "B", "E"]
    assert baseline_round_robin(history, ["E", "A", "D"]) == ["D", "A", "E"]
    assert baseline_most_frequent(history, ["E", "C", "B"]) == ["B", "C", "E"]
    for baseline in (baseline_most_recent_other, baseline_round_robin, baseline_most_frequent):
        assert baseline([], ["X", "Y"]) == ["X", "Y"]
        assert baseline([]) == []


def test_baseline_ranks_over_a_thread():
    speakers = ["A", "B", "A", "B"]
    ranks = baseline_ranks(speakers, [2, 3])
    assert ranks == {"most_recent_other": [1, 1], "round_robin": [1, 1], "most_frequent": [2, 2]}
    assert rank_in("Z", ["A", "B"]) is None
    assert baseline_ranks(["A", "B", "C"], [2], candidates=["A", "B"])["round_robin"] == [None]


def test_speaker_metrics():
    out = speaker_metrics([1, 2, None, 4])
    assert out["n"] == 4
    assert out["accuracy"] == 0.25
    assert out["mrr"] == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)
    empty = speaker_metrics([])
    assert empty["n"] == 0 and math.isnan(empty["accuracy"]) and math.isnan(empty["mrr"])
    with pytest.raises(ValueError):
        speaker_metrics([0])
