import re

from gcrp_assets.lib.clean.markup import to_text
from gcrp_assets.lib.prompts.samples import build_samples, load_system_template
from gcrp_assets.lib.prompts.sheets import SheetTemplate, normalize_sheet, parse_sheet

TEMPLATE = SheetTemplate.load()


def _words(text):
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def test_messy_html_sheet_maps_synonyms_and_keeps_multiline_sections():
    sheet = to_text("<b>Full name:</b> Altair Enzo<br>AGE: 24<br><b>Species</b>: Human<br><b>Job</b> - Doorman<br>"
                    "<b>Personality:</b> Calm under fire.<br>History:<br>Grew up above the club.<br>Ran it later.<br>"
                    "[b]Gear[/b]: knife, lighter; radio")
    fields = parse_sheet(sheet, TEMPLATE)
    assert fields["Age"] == "24" and fields["Race"] == "Human" and fields["Occupation/Profession"] == "Doorman"
    assert fields["Biography"] == "Grew up above the club.\nRan it later."
    assert "Personality: Calm under fire." in fields["Other Information"]
    rendered = normalize_sheet('Altair "Arty" Enzo', sheet, TEMPLATE)
    assert rendered.splitlines()[0] == '**Character Name**: Altair "Arty" Enzo'
    assert "**Equipment**:\n- knife\n- lighter\n- radio" in rendered


def test_nothing_is_invented():
    sheet = to_text("[b]Race[/b]: Elf\n[b]Flaws[/b]: proud\nLikes tea and long walks.")
    rendered = normalize_sheet("Ilse Varo", sheet, TEMPLATE)
    template_words = _words(" ".join(f.name for f in TEMPLATE.fields)) | {"ilse", "varo"}
    assert _words(rendered) - template_words <= _words(sheet)
    assert "**Age**" not in rendered and "**Biography**" not in rendered


def test_table_and_prose_sheets():
    table = to_text("[table][tr][td]Race[/td][td]Elf[/td][/tr][tr][td]Class[/td][td]Ranger[/td][/tr][/table]")
    assert parse_sheet(table, TEMPLATE) == {"Race": "Elf", "Occupation/Profession": "Ranger"}
    assert parse_sheet("A quiet baker who hums.", TEMPLATE) == {"Other Information": "A quiet baker who hums."}
    assert normalize_sheet("Fen", None, TEMPLATE) == "**Character Name**: Fen"


def test_sample_names_the_user_and_lists_the_others():
    thread = {"dump": "d", "thread_id": "t1",
              "characters": [{"name": "Mira", "sheet": "Age: 30"}, {"name": "Dorn", "sheet": None},
                             {"name": "Keri", "sheet": "Race: Elf"}],
              "turns": [{"character": "Mira", "text": "a"}, {"character": "Dorn", "text": "b"},
                        {"character": "Keri", "text": "c"}, {"character": "Mira", "text": "d"}]}
    [sample] = build_samples(thread, TEMPLATE, load_system_template())
    system = sample["system"]
    assert sample["user_character"] == "Mira"
    assert "who is playing as Mira" in system and "Do not generate dialogue for the user's character, Mira" in system
    human, involved = system.split("[Involved Characters]")
    assert "**Age**: 30" in human and "Dorn" in involved and "**Race**: Elf" in involved and "Mira" not in involved
    assert [t["role"] for t in sample["turns"]] == ["user", "model", "model", "user"]
    assert [t["name"] for t in sample["turns"]] == ["Mira", "Dorn", "Keri", "Mira"]


# --- sheets: robustness on the shapes the sample corpus uses -----------------------------------------
import json  # noqa: E402

import pytest  # noqa: E402

from gcrp_assets.orchestration.resources import packaged_inbox  # noqa: E402
from gcrp_assets.lib.ingest.dumps import find_dumps, read_dump  # noqa: E402
from gcrp_assets.lib.prompts.samples import PromptOptions, choose_user_characters  # noqa: E402
from gcrp_assets.lib.prompts.sheets import list_items  # noqa: E402


def test_labels_in_any_order_with_synonyms_and_parts():
    sheet = to_text("[b]Years:[/b] 35\n[b]Race/Species:[/b] Tiefling\n[b]Appearance & Style:[/b]\n"
                    "[list][*]Height: nearly six feet[*]Eyes: amber[/list]\n[b]Nickname(s):[/b] Roz")
    fields = parse_sheet(sheet, TEMPLATE, "Rosalind Hearthstone")
    assert fields["Age"] == "35" and fields["Race"] == "Tiefling"
    # Labelled bullet items stay in their section instead of opening new ones.
    assert fields["Appearance"] == "- Height: nearly six feet\n- Eyes: amber"
    assert fields["Other Information"] == "Nickname(s): Roz"


def test_bbcode_table_rows_and_bold_labels():
    sheet = to_text("[table][tr][td]NAME[/td][td]Brannoc Thorne[/td][/tr][tr][td]AGE[/td][td]24[/td][/tr]"
                    "[tr][td]Pronouns[/td][td]Male[/td][/tr][/table]\n[color=#b5651d][b]Biography[/b][/color]:\n"
                    "Born in the canal quarter.\n\nLeft at sixteen.")
    fields = parse_sheet(sheet, TEMPLATE, "Brannoc Thorne")
    assert fields == {"Character Name": "Brannoc Thorne", "Age": "24",
                      "Biography": "Born in the canal quarter.\n\nLeft at sixteen.",
                      "Other Information": "Pronouns: Male"}


def test_unknown_multiline_sections_stay_whole_and_second_values_are_not_lost():
    sheet = "Name: Fenna Brightwater\nJob: Stonewright\nClass: Fighter\nPERSONALITY:\nDramatic and soft-hearted.\n" \
            "She protects her friends.\nFlaws: Afraid of the dark, Bad with money"
    fields = parse_sheet(sheet, TEMPLATE, "Fenna Brightwater")
    assert fields["Occupation/Profession"] == "Stonewright"
    assert fields["Other Information"] == ("Class: Fighter\n\n"
                                           "Personality: Dramatic and soft-hearted. She protects her friends.")
    rendered = normalize_sheet("Fenna Brightwater", sheet, TEMPLATE)
    assert "**Bad Attributes**:\n- Afraid of the dark\n- Bad with money" in rendered
    assert "- Class: Fighter\n- Personality: Dramatic and soft-hearted. She protects her friends." in rendered


def test_name_lines_are_dropped_unless_they_add_something():
    sheet = to_text("[center][b]TOBIAS MOSSGRAVE[/b][/center]\n[b]Name:[/b] Tobias Mossgrave\n[b]Age:[/b] 35")
    assert parse_sheet(sheet, TEMPLATE, 'Tobias "Tuck" Mossgrave') == {"Character Name": "Tobias Mossgrave",
                                                                       "Age": "35"}
    fields = parse_sheet("Name: Tobias Mossgrave the Third\nAge: 35", TEMPLATE, "Tobias Mossgrave")
    assert fields["Other Information"] == "Name: Tobias Mossgrave the Third"


def test_list_like_sections_become_bullets_and_prose_stays_prose():
    assert list_items("knife, lighter; radio") == ["knife", "lighter", "radio"]
    assert list_items("- a\n- b") == ["a", "b"]
    assert list_items("Tall with a wiry build, and his eyes are grey. Most people notice the scar.") is None
    prose = "Rook stands a little over five feet, broad-shouldered. His hair is white, and his eyes dark."
    rendered = normalize_sheet("Rook", f"Appearance - {prose}\nAge - 56", TEMPLATE)
    assert f"**Appearance**:\n{prose}" in rendered and "- Rook stands" not in rendered


def test_prose_sheets_go_to_other_information_unchanged():
    prose = ("Mira Blackbriar is a forty-two-year-old human. These days she is a librarian's apprentice.\n\n"
             "Mira grew up in the back wagons of a travelling circus. She learned to juggle there.")
    assert parse_sheet(prose, TEMPLATE, "Mira Blackbriar") == {"Other Information": prose}


def _corpus_sheets():
    for path in find_dumps(packaged_inbox()):
        for thread in read_dump(path).threads:
            for character in thread["characters"]:
                if character.get("sheet"):
                    yield character["name"], to_text(character["sheet"])


def test_no_sheet_of_the_sample_corpus_gains_a_word_or_loses_a_value():
    template_words = _words(" ".join(f.name for f in TEMPLATE.fields))
    label_words = {w for f in TEMPLATE.fields for s in f.synonyms for w in s.split()}
    label_words |= {"physical", "description", "style", "traits", "positive", "negative", "s"}
    checked = 0
    for name, sheet in _corpus_sheets():
        rendered = normalize_sheet(name, sheet, TEMPLATE)
        assert _words(rendered) - template_words - _words(name) <= _words(sheet), name
        assert _words(sheet) - _words(rendered) - _words(name) <= label_words, (name, _words(sheet) - _words(rendered))
        assert rendered.count("**Other Information**") <= 1 and "\n- \n" not in rendered
        checked += 1
    assert checked > 200


def test_a_sheet_rewriter_can_replace_the_rules():
    thread = {"dump": "d", "thread_id": "t1",
              "characters": [{"name": "Mira", "sheet": "x"}, {"name": "Dorn", "sheet": None}],
              "turns": [{"character": "Mira", "text": "a"}, {"character": "Dorn", "text": "b"}]}
    [sample] = build_samples(thread, TEMPLATE, load_system_template(),
                             sheet_rewriter=lambda name, sheet, template: f"SHEET OF {name}")
    assert json.loads(sample["sheets"]) == {"Mira": "SHEET OF Mira", "Dorn": "SHEET OF Dorn"}


# --- prompts: user-character strategies, names, OOC turns ---------------------------------------------
def _group_thread(thread_id="t1"):
    names = ["Mira", "Dorn", "Keri", "Fen"]
    return {"dump": "d.jsonl", "thread_id": thread_id,
            "characters": [{"name": n, "sheet": f"Age: {20 + i}"} for i, n in enumerate(names)],
            "turns": [{"post_id": f"p{i}", "character": names[i % 4], "text": f"text {i}", "kind": "ic"}
                      for i in range(8)]}


def test_each_gives_every_character_a_turn_as_user_up_to_max_variants():
    samples = build_samples(_group_thread(), TEMPLATE, load_system_template(),
                            options=PromptOptions(user_character="each", max_variants=0))
    assert [s["user_character"] for s in samples] == ["Mira", "Dorn", "Keri", "Fen"]
    assert [s["variant"] for s in samples] == [0, 1, 2, 3]
    assert {s["thread_key"] for s in samples} == {"d.jsonl/t1"}
    assert len({s["sample_id"] for s in samples}) == 4
    for s in samples:
        assert [t["name"] for t in s["turns"] if t["role"] == "user"] == [s["user_character"]] * 2
        assert f"who is playing as {s['user_character']}" in s["system"]
    capped = build_samples(_group_thread(), TEMPLATE, load_system_template(),
                           options=PromptOptions(user_character="each", max_variants=2))
    assert [s["sample_id"] for s in capped] == [s["sample_id"] for s in samples[:2]]


def test_random_is_seeded_by_seed_and_thread_key():
    pick = lambda tid, seed: choose_user_characters(_group_thread(tid), "random", seed=seed)  # noqa: E731
    assert pick("t1", 0) == pick("t1", 0)
    assert len({pick(f"t{i}", 0)[0] for i in range(40)}) == 4  # every character gets drawn somewhere
    assert [pick(f"t{i}", 0) for i in range(20)] != [pick(f"t{i}", 1) for i in range(20)]
    [sample] = build_samples(_group_thread(), TEMPLATE, load_system_template(),
                             options=PromptOptions(user_character="random"))
    assert [sample["user_character"]] == pick("t1", 0)


def test_starter_is_the_first_roleplay_speaker_even_after_an_ooc_turn():
    thread = _group_thread()
    thread["turns"].insert(0, {"post_id": "p0", "character": None, "text": "(OOC: hi all)", "kind": "ooc"})
    [sample] = build_samples(thread, TEMPLATE, load_system_template())
    assert sample["user_character"] == "Mira"
    assert sample["turns"][0] == {"role": "user", "name": None, "text": "(OOC: hi all)"}


def test_placeholder_names_follow_the_12b_card_and_keep_the_mapping():
    [real] = build_samples(_group_thread(), TEMPLATE, load_system_template(),
                           options=PromptOptions(user_character="starter"))
    [ph] = build_samples(_group_thread(), TEMPLATE, load_system_template(),
                         options=PromptOptions(user_character="starter", names="placeholder"))
    assert [t["name"] for t in ph["turns"][:4]] == ["{user}", "{char1}", "{char2}", "{char3}"]
    assert json.loads(ph["name_map"]) == {"{user}": "Mira", "{char1}": "Dorn", "{char2}": "Keri", "{char3}": "Fen"}
    assert ph["name_map"] == real["name_map"] and ph["sample_id"] == real["sample_id"]
    assert "[Human User]\nMira # {user}\n" in ph["system"] and "\nKeri # {char2}\nCharacter Bio:" in ph["system"]
    assert "# {user}" not in real["system"] and [t["text"] for t in ph["turns"]] == [t["text"] for t in real["turns"]]


def test_unknown_options_are_refused():
    with pytest.raises(ValueError):
        PromptOptions(user_character="everyone")
    with pytest.raises(ValueError):
        PromptOptions(names="nicknames")
