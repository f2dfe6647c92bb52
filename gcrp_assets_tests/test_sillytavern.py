import json

import pytest

from gcrp_assets.lib.formats.chat_format import generation_prompt, get_format, render, sample_messages
from gcrp_assets.lib.formats.sillytavern_presets import (assemble_group_chat, context_preset, instruct_preset,
                                                         render_story_string, stop_strings)
from gcrp_assets_tests.test_formats_tokenization import SAMPLE

INSTRUCT_KEYS = {"name", "input_sequence", "input_suffix", "output_sequence", "output_suffix", "system_sequence",
                 "system_suffix", "last_system_sequence", "system_sequence_prefix", "system_sequence_suffix",
                 "first_input_sequence", "last_input_sequence", "first_output_sequence", "last_output_sequence",
                 "stop_sequence", "user_alignment_message", "system_same_as_user", "wrap", "macro", "names_behavior",
                 "skip_examples", "activation_regex", "bind_to_context"}
CONTEXT_KEYS = {"name", "story_string", "example_separator", "chat_start", "use_stop_strings", "allow_jailbreak",
                "names_as_stop_strings", "always_force_name2", "trim_sentences", "single_line"}
FORMATS = ["inst", "chatml", "herrsimian", "herrsimian-header", "party-final-eos"]


def assemble(fmt, sample, **kwargs):
    messages = sample_messages(sample)
    if sample.get("system"):
        messages = messages[1:]
    return assemble_group_chat(instruct_preset(fmt), context_preset(fmt), sample.get("system", ""), messages,
                               bos_token="<s>" if fmt.add_bos else "", **kwargs)


def test_party_presets_have_every_key_and_the_card_sequences():
    instruct, context = instruct_preset("inst"), context_preset("inst")
    assert set(instruct) == INSTRUCT_KEYS and set(context) == CONTEXT_KEYS
    assert instruct["input_sequence"] == "\n[INST]user\n" and instruct["input_suffix"] == "[/INST]"
    assert instruct["output_sequence"] == "\n[INST]model\n" and instruct["output_suffix"] == "[/INST]"
    assert instruct["system_sequence"] == "\n[INST]system\n" and instruct["system_suffix"] == "[/INST]"
    assert instruct["names_behavior"] == "always" and instruct["wrap"] is False
    assert instruct["stop_sequence"] == "[INST]\n<|im_end|>"
    assert instruct["first_output_sequence"] == "" and instruct["last_output_sequence"] == ""
    assert context["story_string"].startswith("[INST]system\n{{#if system}}{{system}}\n{{/if}}")
    assert context["story_string"].endswith("{{trim}}[/INST]")
    assert context["chat_start"] == "" and context["names_as_stop_strings"] is True
    assert json.loads(json.dumps(instruct)) == instruct


def test_herrsimian_presets_follow_its_card():
    instruct, context = instruct_preset("herrsimian"), context_preset("herrsimian")
    assert instruct["input_sequence"] == "\n\n::::user:" and instruct["output_sequence"] == "\n\n::::assistant:"
    assert instruct["names_behavior"] == "always" and instruct["input_suffix"] == instruct["output_suffix"] == ""
    assert context["names_as_stop_strings"] is False
    assert context["story_string"].startswith("::::user: {{#if system}}")
    assert stop_strings("herrsimian", ["Steve", "Arty"]) == ["::::", "::::user", "::::assistant", "::::user:",
                                                             "::::assistant:", "::::user: "]


def test_stop_strings_are_what_sillytavern_sends():
    assert stop_strings("inst", ["Steve", "Sukuna Gojo"]) == [
        "\nSteve:", "\nSukuna Gojo:", "[INST]", "<|im_end|>", "[INST]user", "[INST]model", "[INST]system"]


@pytest.mark.parametrize("name", FORMATS)
def test_presets_assemble_to_the_training_render(name):
    fmt = get_format(name)
    rendered = render(SAMPLE, fmt, "<s>", eos_token="</s>").text
    if fmt.eos_policy == "last":  # the end of a training sample; a live chat never ends
        rendered = rendered[:-len(fmt.eos_token)]
    assert assemble(fmt, SAMPLE) == rendered
    # The generation line SillyTavern appends equals the prompt evaluation uses.
    for upto, speaker in [(1, 'Altair "Arty" Enzo'), (4, "Sukuna Gojo")]:
        prompt = assemble(fmt, dict(SAMPLE, turns=SAMPLE["turns"][:upto]), speaker=speaker)
        assert prompt == generation_prompt(SAMPLE, fmt, "<s>", upto, speaker)


def test_name_templates_other_than_name_colon_go_into_the_sequences(tmp_path):
    path = tmp_path / "named.yaml"
    path.write_text("separator: \"\\n\"\nsystem: {prefix: \"<|sys|>\\n\"}\nuser: {prefix: \"<|user|>\"}\n"
                    "model: {prefix: \"<|bot|>\"}\nnames: header\nname_template: \" {name}\"\n"
                    "header_suffix: \"\\n\"\n")
    fmt = get_format(path)
    instruct = instruct_preset(fmt)
    assert instruct["names_behavior"] == "none"
    assert instruct["output_sequence"] == "\n<|bot|> {{name}}\n"
    rendered = render(SAMPLE, fmt, None).text
    assert "\n<|bot|> Sukuna Gojo\nSukuna shrugged." in rendered
    assert assemble(fmt, SAMPLE) == rendered


def test_every_turn_eos_goes_into_both_suffixes(tmp_path):
    path = tmp_path / "eos.yaml"
    path.write_text("bos: true\neos: every_turn\nseparator: \"\\n\"\nsystem: {prefix: \"SYS:\\n\"}\n"
                    "user: {prefix: \"USER:\\n\"}\nmodel: {prefix: \"BOT:\\n\"}\n")
    fmt = get_format(path)
    with pytest.raises(ValueError, match="eos_token"):
        instruct_preset(fmt)
    instruct = instruct_preset(fmt, eos_token="</s>")
    assert instruct["input_suffix"] == instruct["output_suffix"] == "</s>"
    messages = sample_messages(SAMPLE)[1:]
    assembled = assemble_group_chat(instruct, context_preset(fmt), SAMPLE["system"], messages, bos_token="<s>")
    assert assembled == render(SAMPLE, fmt, "<s>", eos_token="</s>").text


def test_story_string_subset_of_handlebars():
    template = "A{{#if x}}[{{x}}{{#if y}}+{{y}}{{else}}-{{/if}}]{{/if}}\n{{z}}\n{{trim}}\nB"
    assert render_story_string(template, {"x": "1", "y": "2", "z": "3"}) == "A[1+2]\n3B"
    assert render_story_string(template, {"x": "1"}) == "A[1-]B"
    assert render_story_string("\n\n{{#if x}}X{{/if}}Y", {}) == "Y"
    card = {"description": "Arty is a bartender.", "scenario": "A nightclub."}
    story = render_story_string(context_preset("inst")["story_string"], {"system": "Sys.", **card})
    assert story == "[INST]system\nSys.\nArty is a bartender.\nScenario: A nightclub.[/INST]"


def test_jinja_formats_have_no_presets():
    with pytest.raises(ValueError, match="Jinja"):
        instruct_preset("chatml-names")
