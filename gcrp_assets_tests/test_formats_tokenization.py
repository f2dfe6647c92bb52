import pytest

from gcrp_assets.lib.formats import FORMATS, chat_template, generation_prompt, get_format, render, sample_messages
from gcrp_assets.lib.split import assign_splits
from gcrp_assets.lib.tokenization import IGNORE, tokenize_sample

SAMPLE = {
    "sample_id": "s1", "thread_key": "d/t1", "user_character": "Steve",
    "system": "You are involved in a roleplay with Steve.",
    "turns": [
        {"role": "user", "name": "Steve", "text": "Steve opened the door. \"Evening.\""},
        {"role": "model", "name": "Altair \"Arty\" Enzo", "text": "*Arty nodded.* \"You're late.\""},
        {"role": "model", "name": "Sukuna Gojo", "text": "Sukuna shrugged.\n\nHe said nothing."},
        {"role": "user", "name": "Steve", "text": "Steve laughed."},
        {"role": "model", "name": "Altair \"Arty\" Enzo", "text": "Arty poured two drinks."},
    ],
}


def test_inst_format_matches_the_12b_card():
    text = render(SAMPLE, get_format("inst"), "<s>").text
    assert text.startswith("<s>[INST]system\nYou are involved")
    assert "[/INST]\n[INST]user\nSteve: Steve opened the door." in text
    assert "[INST]model\nAltair \"Arty\" Enzo: *Arty nodded.*" in text
    # Two model turns in a row: turns need not alternate.
    assert "You're late.\"[/INST]\n[INST]model\nSukuna Gojo: " in text
    assert text.endswith("Arty poured two drinks.[/INST]")


def test_herrsimian_format_matches_the_8b_card():
    text = render(SAMPLE, get_format("herrsimian"), "<s>").text
    assert text.startswith("<s>::::user: You are involved")
    assert "\n\n::::user:Steve: Steve opened" in text
    assert "\n\n::::assistant:Sukuna Gojo: Sukuna shrugged." in text
    assert not text.endswith("</s>")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_trained_tokens_decode_to_exactly_the_trained_spans(name, smol_tokenizer):
    fmt = get_format(name)
    [window], dropped = tokenize_sample(SAMPLE, fmt, smol_tokenizer, max_length=4096)
    assert not dropped
    trained = [t for t, label in zip(window.input_ids, window.labels) if label != IGNORE]
    rendered = render(SAMPLE, fmt, smol_tokenizer.bos_token)
    assert smol_tokenizer.decode(trained) == rendered.trained_text()
    if fmt.label_policy == "model_turns":
        expected = "".join(f"{t['name']}: {t['text']}{fmt.turn_suffix}" for t in SAMPLE["turns"] if t["role"] == "model")
        assert rendered.trained_text() == expected
        assert "Steve opened" not in smol_tokenizer.decode(trained)
    else:
        assert window.labels == window.input_ids
    if fmt.add_bos:
        assert window.input_ids[0] == smol_tokenizer.bos_token_id
        assert window.input_ids.count(smol_tokenizer.bos_token_id) == 1
    # Tokenized once, as a whole: identical to tokenizing the rendered string at inference.
    assert window.input_ids == smol_tokenizer(rendered.text, add_special_tokens=False)["input_ids"]


def test_long_samples_become_windows_at_turn_boundaries_each_with_the_system_prompt(smol_tokenizer):
    long_sample = dict(SAMPLE, turns=SAMPLE["turns"] * 6)
    fmt = get_format("inst")
    windows, dropped = tokenize_sample(long_sample, fmt, smol_tokenizer, max_length=120)
    assert len(windows) > 2 and not dropped
    assert windows[0].first_turn == 0 and windows[-1].last_turn == len(long_sample["turns"])
    for a, b in zip(windows, windows[1:]):
        assert a.last_turn == b.first_turn
    for w in windows:
        assert len(w.input_ids) <= 120
        assert w.text.startswith("<|im_start|>[INST]system\nYou are involved")
        assert w.input_ids.count(smol_tokenizer.bos_token_id) == 1


def test_a_turn_longer_than_the_context_is_recorded_not_silently_lost(smol_tokenizer):
    huge = dict(SAMPLE, turns=SAMPLE["turns"] + [{"role": "model", "name": "Sukuna Gojo", "text": "word " * 400}])
    windows, dropped = tokenize_sample(huge, get_format("inst"), smol_tokenizer, max_length=200)
    assert [d.reason for d in dropped] == ["turn_exceeds_max_length"] and dropped[0].turn == 5
    assert windows and windows[-1].last_turn == 5


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_exported_chat_template_reproduces_the_training_render(name, smol_tokenizer):
    fmt = get_format(name)
    rendered = render(SAMPLE, fmt, smol_tokenizer.bos_token).text
    templated = smol_tokenizer.apply_chat_template(sample_messages(SAMPLE), chat_template=chat_template(fmt),
                                                   tokenize=False)
    assert templated == rendered


def test_generation_prompt_ends_with_the_speaker_header(smol_tokenizer):
    prompt = generation_prompt(SAMPLE, get_format("inst"), "<s>", 4, "Altair \"Arty\" Enzo")
    assert prompt.endswith("Steve laughed.[/INST]\n[INST]model\nAltair \"Arty\" Enzo:")


def test_split_is_by_thread_deterministic_and_stable():
    keys = [f"dump/t{i}" for i in range(200)]
    first = assign_splits(keys, 0.15, 4, seed=0)
    assert first == assign_splits(list(reversed(keys)), 0.15, 4, seed=0)
    assert 15 <= sum(v == "eval" for v in first.values()) <= 45
    grown = assign_splits(keys + [f"new/t{i}" for i in range(50)], 0.15, 4, seed=0)
    assert all(grown[k] == first[k] for k in keys)  # adding dumps never moves a thread across the split
    tiny = assign_splits(["a", "b", "c"], 0.0, 2, seed=0)
    assert sum(v == "eval" for v in tiny.values()) == 2
