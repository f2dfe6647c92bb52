import re

from gcrp_assets.lib.markup import to_text
from gcrp_assets.lib.prompts import build_samples, load_system_template
from gcrp_assets.lib.sheets import SheetTemplate, normalize_sheet, parse_sheet

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
