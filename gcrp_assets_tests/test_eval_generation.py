"""Batched generation (greedy + seeded min-p samples, left padding), stops on derived from stops off, detectors."""

import math

import pytest

from gcrp_assets.lib.evaluation.generation import (Continuation, generate_batch, generation_cases,
                                                   sample_next, stop_markers, stops_on)
from gcrp_assets.lib.evaluation.detectors import impersonation_offset, impersonates, speaker_headers
from gcrp_assets.lib.formats.chat_format import generation_prompt, get_format
from gcrp_assets_tests.factories import SAMPLE

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def varied_model():
    """A tiny random Llama with untied embeddings: unlike the shared one, its greedy text does not just repeat
    the last token, so a stop string can fall in the middle of a continuation."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval()


def _prompts(tokenizer):
    fmt = get_format("inst")
    return [generation_prompt(SAMPLE, fmt, tokenizer.bos_token, k, SAMPLE["turns"][k]["name"]) for k in (1, 2, 4)]


# --- sampling -------------------------------------------------------------------------------------------

def test_sample_next_is_min_p_sampling():
    logits = torch.tensor([[2.0, 1.0, 0.5, -3.0]])
    probs = torch.softmax(logits / 0.8, dim=-1)[0]
    g = torch.Generator().manual_seed(0)
    draws = [int(sample_next(logits, 0.8, 0.1, torch.rand((1, 4), generator=g))[0]) for _ in range(4000)]
    kept = probs >= 0.1 * probs.max()
    assert kept.tolist() == [True, True, True, False]
    assert 3 not in draws  # below min_p · max p: never drawn
    expected = probs * kept / (probs * kept).sum()
    for token in range(3):
        assert draws.count(token) / len(draws) == pytest.approx(float(expected[token]), abs=0.03)
    # temperature → 0 is greedy
    assert int(sample_next(logits, 1e-9, 0.0, torch.rand((1, 4), generator=g))[0]) == 0


# --- batched generation ---------------------------------------------------------------------------------

def test_greedy_matches_hf_generate(tiny_model, smol_tokenizer):
    prompts = _prompts(smol_tokenizer)
    ours = generate_batch(tiny_model, smol_tokenizer, prompts, max_new_tokens=12, batch_size=3)
    for prompt, [greedy] in zip(prompts, ours):
        ids = smol_tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = tiny_model.generate(**ids, max_new_tokens=12, do_sample=False, num_beams=1,
                                      pad_token_id=smol_tokenizer.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        assert greedy.text == smol_tokenizer.decode(new, skip_special_tokens=False)
        assert greedy.n_tokens == len(new) and isinstance(greedy, Continuation)
        assert greedy.hit_cap == (len(new) == 12 and int(new[-1]) != smol_tokenizer.eos_token_id)


def test_samples_are_seeded_and_independent_of_batching(tiny_model, smol_tokenizer):
    prompts = _prompts(smol_tokenizer)
    kwargs = dict(max_new_tokens=10, n_samples=3, temperature=1.0, min_p=0.05, seeds=[11, 12, 13])
    together = generate_batch(tiny_model, smol_tokenizer, prompts, batch_size=3, **kwargs)
    alone = generate_batch(tiny_model, smol_tokenizer, prompts, batch_size=1, **kwargs)
    assert [[c.text for c in row] for row in together] == [[c.text for c in row] for row in alone]
    assert all(len(row) == 4 for row in together)           # greedy + 3 samples
    sampled = [c.text for c in together[0][1:]]
    assert len(set(sampled)) > 1                             # a random model at temperature 1 varies
    other_seed = generate_batch(tiny_model, smol_tokenizer, prompts[:1], batch_size=1,
                                **{**kwargs, "seeds": [99]})
    assert other_seed[0][0].text == together[0][0].text      # greedy does not depend on the seed
    assert [c.text for c in other_seed[0][1:]] != sampled
    only_samples = generate_batch(tiny_model, smol_tokenizer, prompts, batch_size=2, greedy=False, **kwargs)
    assert [[c.text for c in row] for row in only_samples] == [[c.text for c in row[1:]] for row in together]


def test_eos_ends_a_row(tiny_model, smol_tokenizer):
    prompt = _prompts(smol_tokenizer)[0]
    [[free]] = generate_batch(tiny_model, smol_tokenizer, [prompt], max_new_tokens=8)
    first = free.ids[0]
    assert len(free.ids) == free.n_tokens == 8
    [[stopped]] = generate_batch(tiny_model, smol_tokenizer, [prompt], max_new_tokens=8, eos_token_ids=[first])
    assert stopped.n_tokens == 1 and stopped.stopped_by_eos and not stopped.hit_cap


def test_stops_on_equals_generation_with_stop_strings(varied_model, smol_tokenizer):
    """Cutting the stops-off continuation before the first stop string gives what HF generation with that
    stop string shows: the same tokens up to the one completing the stop string, the text before it."""
    fmt = get_format("inst")
    prompts = _prompts(smol_tokenizer)
    tiny_model = varied_model
    outs = generate_batch(tiny_model, smol_tokenizer, prompts, max_new_tokens=24, batch_size=3)
    checked = 0
    for prompt, [free] in zip(prompts, outs):
        text = free.text
        # a string the continuation does produce, not also completed across the prompt's end (HF checks the
        # stop strings on the prompt's last tokens as well; a front-end checks the new text only)
        stops = [text[i:i + 3] for i in range(len(text) // 3, len(text) - 3)
                 if (prompt[-3:] + text).find(text[i:i + 3]) >= 3 and text[i:i + 3].strip()]
        if not stops:
            continue
        stop = stops[0]
        stop_fmt = type(fmt)(**{**fmt.__dict__, "stop_strings": (stop,), "turn_suffix": "\x00"})
        shown, fired = stops_on(free.text, stop_fmt)
        assert fired and shown == free.text[:free.text.find(stop)]
        ids = smol_tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = tiny_model.generate(**ids, max_new_tokens=24, do_sample=False, num_beams=1, stop_strings=[stop],
                                      tokenizer=smol_tokenizer, pad_token_id=smol_tokenizer.eos_token_id)
        with_stops = smol_tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)
        assert stop in with_stops and with_stops[:with_stops.find(stop)] == shown
        assert free.text.startswith(with_stops)           # generation simply stopped there
        checked += 1
    assert checked == len(prompts)


def test_stop_markers_and_cut():
    inst = get_format("inst")
    assert stop_markers(inst, "<|im_end|>") == ["[INST]", "<|im_end|>", "[/INST]"]
    assert stops_on("Arty nodded.[/INST]\n[INST]user\nSteve: hi", inst) == ("Arty nodded.", True)
    assert stops_on("Arty nodded and", inst) == ("Arty nodded and", False)
    herr = get_format("herrsimian")
    assert stops_on(" Mark smiled.\n\n::::user:Jack: hi", herr) == (" Mark smiled.", True)


# --- detectors ------------------------------------------------------------------------------------------

def test_impersonation_and_other_speakers():
    inst, herr = get_format("inst"), get_format("herrsimian")
    run_on = " Arty nodded.[/INST]\n[INST]user\nSteve: I sit down."
    assert impersonation_offset(run_on, "Steve", inst) == run_on.index("\nSteve") or \
        impersonation_offset(run_on, "Steve", inst) == run_on.index("[INST]user")
    assert impersonates(run_on, "Steve", inst)
    assert impersonates(" Arty nodded.\n**Steve**: fine.", "Steve", inst)
    assert not impersonates(" Arty told Steve: no.", "Steve", inst)          # mid-line is speech, not a header
    assert not impersonates(" Arty nodded.[/INST]", "Steve", inst)
    assert impersonates(" Mark smiled.\n\n::::user:Jack: hi", "Jack", herr)
    heads = speaker_headers(" ok.\nSukuna Gojo: hm\nsteve: hey", ["Sukuna Gojo", "Steve"], inst)
    assert [name for _, name in heads] == ["Sukuna Gojo", "Steve"]
    assert speaker_headers("x", [], inst) == []


def test_generation_cases_round_robin(smol_tokenizer):
    fmt = get_format("inst")
    other = {**SAMPLE, "sample_id": "s2", "thread_key": "d/t2"}
    cases = generation_cases([SAMPLE, other], fmt, smol_tokenizer, 4096, limit=5)
    assert [(c.sample_id, c.turn) for c in cases] == [("s1", 4), ("s2", 4), ("s1", 2), ("s2", 2), ("s1", 1)]
    assert cases[0].human_reply == "Arty poured two drinks." and cases[0].history[-1] == "Steve laughed."
    assert cases[0].roster == ("Steve", "Altair \"Arty\" Enzo", "Sukuna Gojo")
    assert cases[0].prompt.endswith("[INST]model\nAltair \"Arty\" Enzo:")
    assert len(generation_cases([SAMPLE, other], fmt, smol_tokenizer, 4096, limit=5, per_sample=1)) == 2
    short = len(smol_tokenizer(cases[-1].prompt, add_special_tokens=False)["input_ids"])
    tight = generation_cases([SAMPLE], fmt, smol_tokenizer, short, limit=5)
    assert [c.turn for c in tight] == [1]                  # later turns' contexts do not fit
    assert math.isnan(float("nan"))
