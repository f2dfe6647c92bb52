"""SillyTavern presets against SillyTavern's prompt assembly (`st_prompt_emulator`, rules from 1.12.6's source):
with the exported Master Import and the exported data folder, the prompt SillyTavern builds for a group chat is
the training render, and replies end cleanly at the stop strings."""

import json
import re

import pytest

from gcrp_assets.lib.evaluation.model_card import recommended_sampling
from gcrp_assets.lib.export.sillytavern_folder import export_samples
from gcrp_assets.lib.formats.chat_format import generation_prompt, get_format, render
from gcrp_assets.lib.formats.sillytavern_presets import (MASTER, build_presets, instruct_preset, js_regex_literal,
                                                         write_presets)
from gcrp_assets.lib.prompts.samples import PromptOptions, build_samples, load_system_template
from gcrp_assets.lib.prompts.sheets import SheetTemplate
from gcrp_assets_tests.st_prompt_emulator import load_export

FORMATS = ["inst", "chatml", "herrsimian", "herrsimian-header", "party-final-eos", "chatml-names"]
SYSTEM_INTRO = ("You are involved in a multi-character internet-style roleplaying session with a human user, who is "
                "playing as Mira. Do not generate dialogue for the user's character, Mira. Focus on the other "
                "characters.")
MIRA_SHEET = "**Character Name**: Mira\n**Age**: 24\n**Occupation/Profession**: Courier"
BRAM_SHEET = "**Character Name**: Bram\n**Age**: 52\n**Occupation/Profession**: Guard"
ADA_SHEET = "**Character Name**: Ada\n**Occupation/Profession**: Innkeeper"
SYSTEM = (f"{SYSTEM_INTRO}\n\n[Human User]\nMira\nCharacter Bio:\n{MIRA_SHEET}\n\n[Involved Characters]\n"
          f"Bram\nCharacter Bio:\n{BRAM_SHEET}\n---\nAda\nCharacter Bio:\n{ADA_SHEET}\n---\n\nThe roleplay begins now.")


def group_thread(thread_id: str = "t1") -> dict:
    """A group of 3 with the user's persona (Mira, the human), non-alternating turns and a narrator line."""
    return {"dump": "d", "thread_id": thread_id, "human": "Mira", "characters": [
        {"name": "Mira", "sheet": "Age: 24\nOccupation: Courier", "aliases": []},
        {"name": "Bram", "sheet": "Age: 52\nOccupation: Guard", "aliases": []},
        {"name": "Ada", "sheet": "Occupation: Innkeeper", "aliases": []}],
        "turns": [{"character": "Bram", "text": "*Bram nods.*", "kind": "ic"},
                  {"character": "Ada", "text": "\"Evening.\"", "kind": "ic"},
                  {"character": "Mira", "text": "A room, please.", "kind": "ic"},
                  {"character": None, "text": "(OOC: brb)", "kind": "ooc"},
                  {"character": "Ada", "text": "Two silver.", "kind": "ic"},
                  {"character": "Bram", "text": "Fine, stay.", "kind": "ic"}]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sample = build_samples(group_thread(), SheetTemplate.load(), load_system_template(), options=PromptOptions())[0]
    assert sample["system"] == SYSTEM  # the training system prompt the expected prompts below spell out
    folder = tmp_path_factory.mktemp("st") / "export"
    export_samples([sample], folder)
    return sample, folder


def presets_of(fmt, tmp_path=None) -> dict:
    """The Master Import file, read back from disk as SillyTavern's importer reads it."""
    if tmp_path is None:
        return build_presets(fmt, sampling=recommended_sampling(get_format(fmt)), eos_token="</s>").master()
    files = write_presets(tmp_path, fmt, sampling=recommended_sampling(get_format(fmt)), eos_token="</s>")
    return json.loads(files.paths[MASTER].read_text())


def strip_bos(fmt, text: str) -> str:
    return text[len("<s>"):] if fmt.add_bos else text


# Hand-checked: what SillyTavern sends for Bram's reply after Ada's "Two silver." (turn 4), per format.
CHAT = [("model", "Bram", "*Bram nods.*"), ("model", "Ada", "\"Evening.\""), ("user", "Mira", "A room, please."),
        ("user", None, "(OOC: brb)"), ("model", "Ada", "Two silver.")]
EXPECTED_INST = (f"[INST]system\n{SYSTEM}[/INST]\n[INST]model\nBram: *Bram nods.*[/INST]\n"
                 "[INST]model\nAda: \"Evening.\"[/INST]\n[INST]user\nMira: A room, please.[/INST]\n"
                 "[INST]user\n(OOC: brb)[/INST]\n[INST]model\nAda: Two silver.[/INST]\n[INST]model\nBram:")
EXPECTED_CHATML = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>assistant\nBram: *Bram nods.*<|im_end|>\n"
                   "<|im_start|>assistant\nAda: \"Evening.\"<|im_end|>\n<|im_start|>user\nMira: A room, please."
                   "<|im_end|>\n<|im_start|>user\n(OOC: brb)<|im_end|>\n<|im_start|>assistant\nAda: Two silver."
                   "<|im_end|>\n<|im_start|>assistant\nBram:")
EXPECTED_HERRSIMIAN = (f"::::user: {SYSTEM}\n\n::::assistant:Bram: *Bram nods.*\n\n::::assistant:Ada: \"Evening.\"\n\n"
                       "::::user:Mira: A room, please.\n\n::::user: (OOC: brb)\n\n::::assistant:Ada: Two silver.\n\n"
                       "::::assistant:Bram:")


@pytest.mark.parametrize("name, expected", [("inst", EXPECTED_INST), ("party-final-eos", EXPECTED_INST),
                                            ("chatml", EXPECTED_CHATML), ("chatml-names", EXPECTED_CHATML),
                                            ("herrsimian", EXPECTED_HERRSIMIAN),
                                            ("herrsimian-header", EXPECTED_HERRSIMIAN)])
def test_sillytavern_prompt_is_the_hand_checked_training_prompt(exported, name, expected, tmp_path):
    sample, folder = exported
    st = load_export(folder, presets_of(name, tmp_path), "d/t1")
    st.chat = st.chat[:4 + 1]
    assert st.prompt("Bram") == expected
    assert strip_bos(get_format(name), generation_prompt(sample, get_format(name), "<s>", 5, "Bram")) == expected


@pytest.mark.parametrize("name", FORMATS)
def test_every_reply_slot_matches_training_and_stops_cleanly(exported, name):
    sample, folder = exported
    fmt = get_format(name)
    presets = presets_of(name)
    full = render(sample, fmt, "<s>", eos_token="</s>").text
    st = load_export(folder, presets, "d/t1")
    # The whole chat: the training render, plus the separator that opens the next block (BOS from the backend;
    # a training sample's final EOS has no counterpart in a chat that goes on).
    chat_alone = strip_bos(fmt, full)
    if fmt.eos_policy == "last":
        chat_alone = chat_alone[:-len(fmt.eos_token)]
    assert st.prompt("Bram", generation_line=False) == chat_alone + get_format(name).separator * (not fmt.is_jinja)
    for k, turn in enumerate(sample["turns"]):
        if turn["role"] != "model":
            continue
        st = load_export(folder, presets, "d/t1")
        st.chat = st.chat[:k]
        expected = generation_prompt(sample, fmt, "<s>", k, turn["name"], eos_token="</s>")
        assert st.prompt(turn["name"]) == strip_bos(fmt, expected)
        # A model that continues exactly as in training: SillyTavern stores the turn's text, nothing more.
        reply = st.clean_reply(full[len(expected):], turn["name"])
        assert reply == turn["text"]


def test_inst_terminator_is_a_stop_string_so_no_reply_keeps_it(exported):
    """Issue 13 point 3: without `[/INST]` among the stop strings the reply was stored as 'Fine, stay.[/INST]'."""
    sample, folder = exported
    presets = presets_of("inst")
    st = load_export(folder, presets, "d/t1")
    st.chat = st.chat[:5]
    raw = " Fine, stay.[/INST]\n[INST]model\nAda: Good.[/INST]"
    assert st.clean_reply(raw, "Bram") == "Fine, stay."
    old = dict(presets["instruct"], stop_sequence="[INST]\n<|im_end|>")
    st.instruct = old
    assert st.clean_reply(raw, "Bram") == "Fine, stay.[/INST]"  # the old preset's failure, reproduced
    assert "[/INST]" in presets["instruct"]["stop_sequence"].split("\n")


def test_empty_system_prompt_emits_no_system_block(exported):
    """Issue 13 point 5: with the System Prompt off SillyTavern emitted an empty `[INST]system[/INST]` block."""
    sample, folder = exported
    st = load_export(folder, presets_of("inst"), "d/t1", system_prompt_on=False)
    st.chat = st.chat[:2]
    empty = dict(sample, system="")
    expected = "[INST]model\nBram: *Bram nods.*[/INST]\n[INST]model\nAda: \"Evening.\"[/INST]\n[INST]model\nBram:"
    assert st.prompt("Bram") == expected == strip_bos(get_format("inst"), generation_prompt(empty, get_format("inst"),
                                                                                              "<s>", 2, "Bram"))


def test_custom_yaml_name_template(exported, tmp_path):
    """Issue 13 point 6: a custom name template (`[Bram] `): the generation line ends as in generation_prompt
    (no trailing space), and SillyTavern's own role stop strings carry the names it fills in."""
    sample, folder = exported
    spec = tmp_path / "bracket.yaml"
    spec.write_text('separator: "\\n"\nsystem: {prefix: "<|sys|>\\n", suffix: "</s>"}\n'
                    'user: {prefix: "<|user|>", suffix: "</u>"}\nmodel: {prefix: "<|bot|>", suffix: "</b>"}\n'
                    'names: header\nname_template: "[{name}]"\nheader_suffix: " "\nlabel_policy: all\n'
                    'stop_strings: ["<|user|>"]\n')
    fmt = get_format(spec)
    presets = presets_of(fmt)
    assert presets["instruct"]["names_behavior"] == "none"
    assert presets["instruct"]["output_sequence"] == "<|bot|>[{{name}}] "
    assert presets["instruct"]["last_output_sequence"] == "<|bot|>[{{name}}]"
    st = load_export(folder, presets, "d/t1")
    st.chat = st.chat[:5]
    expected = (f"<|sys|>\n{SYSTEM}</s>\n<|bot|>[Bram] *Bram nods.*</b>\n<|bot|>[Ada] \"Evening.\"</b>\n"
                "<|user|>[Mira] A room, please.</u>\n<|user|> (OOC: brb)</u>\n<|bot|>[Ada] Two silver.</b>\n"
                "<|bot|>[Bram]")
    assert st.prompt("Bram") == expected == generation_prompt(sample, fmt, None, 5, "Bram")
    stops = st.stopping_strings("Bram")
    assert "<|user|>[Mira] " in stops and "<|bot|>[Bram] " in stops  # SillyTavern fills in name1 / name2
    assert "<|bot|>" in stops and "</b>" in stops  # ours: any speaker's header, and the terminator
    assert st.clean_reply(" Fine, stay.</b>\n<|bot|>[Ada] Out.", "Bram") == "Fine, stay."


def test_a_format_sillytavern_cannot_express_gets_notes_not_presets(tmp_path):
    """Issue 13 point 6: a Jinja format that is not prefix/suffix sequences: no preset files, a reason, no raise."""
    template = tmp_path / "shout.jinja"
    template.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content | upper }}</{{ m.role }}>\n{% endfor %}")
    files = write_presets(tmp_path / "out", template, sampling={"temperature": 0.8, "min_p": 0.1})
    assert files.paths == {} and not (tmp_path / "out").exists()
    assert files.presets.cannot_express and "cannot be expressed" in files.notes[0]
    with pytest.raises(ValueError, match="cannot be expressed"):
        instruct_preset(get_format(template))


def test_presets_select_themselves_and_leave_the_users_binding_alone(tmp_path):
    files = write_presets(tmp_path, "inst", sampling=recommended_sampling(get_format("inst")), eos_token="</s>",
                          model_name="gcrp-inst-12b")
    master = json.loads(files.paths[MASTER].read_text())
    instruct = master["instruct"]
    assert "bind_to_context" not in instruct and "enabled" not in instruct  # issue 13 point 7
    pattern = instruct["activation_regex"]
    assert pattern == js_regex_literal("gcrp-inst-12b") == "/gcrp-inst-12b/i"
    assert re.search(pattern[1:-2], "models/GCRP-INST-12B.Q4_K_M.gguf", re.I)
    # SillyTavern's master import accepts a section only with these keys (`preset-manager.js isPossibly*Data`).
    assert {"name", "input_sequence", "output_sequence"} <= set(instruct)
    assert {"name", "story_string"} <= set(master["context"]) and {"name", "content"} <= set(master["sysprompt"])
    assert {"temp", "top_k", "top_p", "rep_pen"} <= set(master["preset"])
    assert (master["preset"]["temp"], master["preset"]["min_p"]) == (0.8, 0.1)
    assert master["preset"]["add_bos_token"] is True
    assert "{{persona}}" in master["sysprompt"]["content"] and "{{description}}" in master["sysprompt"]["content"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files.paths)


def test_model_card_section_is_computed_from_the_format(tmp_path):
    from gcrp_assets.lib.evaluation.model_card import sillytavern_section

    text = "\n".join(sillytavern_section(get_format("inst")))
    assert "Master Import" in text and "3. " in text and "{{char}}\\nCharacter Bio:" not in text
    assert "Join Prefix `{{char}}\nCharacter Bio:\n{{noop}}`" in text and "min_p 0.1" in text
    template = tmp_path / "shout.jinja"
    template.write_text("{% for m in messages %}{{ m.content | upper }}{% endfor %}")
    text = "\n".join(sillytavern_section(get_format(template)))
    assert "No SillyTavern presets were written" in text and "cannot be expressed" in text
    assert "Master Import" not in text
