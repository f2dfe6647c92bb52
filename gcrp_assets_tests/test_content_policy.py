"""Content policy: sexual content together with a minor is rejected; everything else is kept.

The texts are written for these tests: sexual in vocabulary, not graphic.
"""

import pytest

from gcrp_assets.lib.clean.content_policy import (MINOR_SEXUAL_CONTENT, PolicyConfig, Violation, _fold,
                                                  check_thread, default_rules, literal_anchors, load_policy)

POLICY = load_policy()

ADULT_SEX = "Later that night Mira pulled Dorn into her bed; they undressed each other, aroused, and had sex."
FILLER = ("The rain had not stopped for three days, and the river ran high under the old stone bridge while the "
          "market stalls along the quay stayed shuttered and the ferrymen argued about the tolls again. ")


def thread(*turns, sheets=None, title="The Ferry at Dusk"):
    """turns: (character, text) pairs; sheets: {character: sheet text}."""
    names = list(dict.fromkeys([c for c, _ in turns if c] + list(sheets or {})))
    return {"title": title,
            "turns": [{"character": c, "text": t, "kind": "ic" if c else "ooc"} for c, t in turns],
            "characters": [{"name": n, "sheet": (sheets or {}).get(n)} for n in names]}


def rejected(t, policy=POLICY) -> Violation | None:
    return check_thread(t, policy)


# --- kept --------------------------------------------------------------------------------------------
def test_non_sexual_threads_are_kept_whatever_their_ages_and_schools():
    t = thread(("Lily Marsh", "Lily is 15 and a freshman in high school. The teacher kept her after class."),
               ("Dorn Hale", "\"Nice shot, kid,\" Dorn told the student. She was 14 when she first held a bow."),
               ("Lily Marsh", "I'm 15, Lily said, and I'm no little girl. The school burned down; the children ran."),
               sheets={"Lily Marsh": "Name: Lily Marsh\nAge: 15\nGrade: 9th grade\nOccupation: middle schooler"})
    assert rejected(t) is None


def test_adults_in_a_sexual_thread_are_kept():
    t = thread(("Mira Vell", "Mira is 24. She is 19 years old in the flashback. " + ADULT_SEX),
               ("Dorn Hale", "On her 18th birthday she bought an 18th century bed; he poured a 12-year-old whisky."),
               ("Dorn Hale", "The twenty-five-year-old and the twenty five year old made love. She is a college "
                             "freshman and a student; her teacher never knew."),
               ("Mira Vell", "After sex she was with child, and she wants to have a child with him."),
               sheets={"Mira Vell": "**Age:** 24\nRace: Elf", "Dorn Hale": "AGE: thirty-one\nAge: 31"})
    assert rejected(t) is None


@pytest.mark.parametrize("text", [
    "She was 5 years older than him, and they had sex.",
    "She was one of them, and they had sex.",
    "He was 2 drinks in when they had sex.",
    "She turned 3 pages, aroused.",
    "He is 6'2\" and naked.",
    "She was 5 foot nothing and aroused.",
    "It was 12 o'clock when they had sex.",
    "Their kids were asleep when they made love.",
    "He had 2 yo-yos and a naked blade, and they had sex.",
    "They were 12 in all; she was aroused.",
])
def test_numbers_that_are_no_ages_next_to_sexual_content_are_kept(text):
    assert rejected(thread(("Mira Vell", text))) is None, text


def test_a_childhood_memory_far_from_sexual_content_is_kept():
    t = thread(("Mira Vell", "When she was 12 she moved to Paris, and at the age of 16 she left home. "
                             "Sixteen years old when the war began, she had seen too much."),
               ("Dorn Hale", FILLER + ADULT_SEX))
    assert rejected(t) is None
    # Inside one turn, still further than window_words from the sexual vocabulary.
    assert rejected(thread(("Mira Vell", "When she was 12 she moved to Paris. " + FILLER + ADULT_SEX))) is None


def test_age_16_years_ago_and_kid_as_slang_in_an_adult_sexual_thread_are_kept():
    t = thread(("Mira Vell", "She left home at age 16 years ago and never looked back. " + ADULT_SEX),
               ("Dorn Hale", "\"Easy, kid,\" Dorn said to Mira, who is 26, as they crossed the bridge."),
               ("Mira Vell", FILLER + "Come here, kid, she teased. " + FILLER + ADULT_SEX))
    assert rejected(t) is None


def test_non_sexual_uses_of_sexual_words_do_not_open_the_check():
    t = thread(("Dorn Hale", "The kid drew a naked blade; she had never spoken to the opposite sex. "
                             "He is a 7th grader with a lust for adventure."))
    assert rejected(t) is None


def test_a_disabled_policy_rejects_nothing():
    t = thread(("Dorn Hale", "She was 14 and they had sex."))
    assert rejected(t, load_policy(PolicyConfig(content_policy=False))) is None
    assert rejected(t) is not None


# --- rejected ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,rule", [
    ("She was 14 and he touched her breasts.", "subject_is_age"),
    ("The sixteen-year-old moaned with pleasure.", "years_old"),
    ("She was fifteen years old, naked in his bed.", "subject_is_age"),
    ("Come here, kid. Let's have sex.", "child_terms"),
    ("He seduced the little girl.", "child_terms"),
    ("The 13 yo was aroused.", "yo"),
    ("On her fifteenth birthday they had sex.", "birthday"),
    ("The middle schooler undressed him, aroused.", "school_terms"),
    ("When she was 12, he molested her.", "subject_is_age"),   # a memory right next to sexual content
])
def test_a_minor_indicator_next_to_sexual_content_is_rejected(text, rule):
    v = rejected(thread(("Dorn Hale", text)))
    assert v is not None and v.reason == MINOR_SEXUAL_CONTENT
    assert rule in v.detail and any(rule in e for e in v.evidence)


def test_a_sheet_age_makes_the_character_a_minor_for_the_whole_thread():
    t = thread(("Lily Marsh", "Lily smiled at the ferryman."),
               ("Dorn Hale", FILLER + FILLER + "Dorn pushed Lily onto the bed and they had sex."),
               sheets={"Lily Marsh": "Name: Lily Marsh\n**Age:** 15\nRace: Human"})
    v = rejected(t)
    assert v is not None and "age_label" in v.detail
    assert any(e.startswith("sheet of Lily Marsh: Lily Marsh is a minor") for e in v.evidence)
    assert any(e.startswith("turn[1] (Dorn Hale): Lily Marsh in sexual content") for e in v.evidence)
    # The same sheet with an adult age: kept.
    t["characters"][0]["sheet"] = "Name: Lily Marsh\n**Age:** 22\nRace: Human"
    assert rejected(t) is None


@pytest.mark.parametrize("intro,rule", [
    ("Lily is a seventh grader.", "copula_school_terms"),
    ("Lily is a freshman in high school.", "copula_school_terms"),
    ("Lily (14) waved from the dock.", "name_paren_age"),
    ("Lily, 13, waved from the dock.", "name_comma_age"),
    ("Lily Marsh is fifteen.", "subject_is_age"),
    ("Lily’s only 16.", "subject_is_age"),
    ("Lily turned 15 yesterday.", "subject_turned_age"),
    ("Lily shrugged. She's just a kid, really.", "copula_child_terms"),
])
def test_a_turn_can_make_a_character_a_minor(intro, rule):
    t = thread(("Lily Marsh", intro), ("Dorn Hale", FILLER + FILLER + "That night Lily was naked in his bed, aroused."))
    v = rejected(t)
    assert v is not None and rule in v.detail, (intro, v)


def test_first_person_age_attaches_to_the_author():
    t = thread(("Lily Marsh", "\"I'm 15,\" I said."), ("Lily Marsh", FILLER + FILLER + "I seduced him and we had sex."))
    assert rejected(t) is not None
    # Someone else's age stated in a turn is not the author's.
    t = thread(("Lily Marsh", "Her 12-year-old brother waved. A girl aged 15 sold apples."),
               ("Lily Marsh", FILLER + FILLER + "I seduced him and we had sex."))
    assert rejected(t) is None


def test_sheet_school_fields_and_sexual_sheets():
    t = thread(("Lily Marsh", FILLER + "Lily pulled off her panties."), sheets={"Lily Marsh": "Grade: 8th grade"})
    assert "sheet_school_field" in rejected(t).detail
    t["characters"][0]["sheet"] = "Occupation: Student (middle school)"
    assert "sheet_school_field" in rejected(t).detail
    t = thread(("Lily Marsh", "Lily waved."), sheets={"Lily Marsh": "AGE: FIFTEEN\n" + FILLER * 2 + "Kinks: bondage"})
    assert rejected(t) is not None
    # A past school in an adult's sheet is no current grade.
    t = thread(("Mira Vell", ADULT_SEX), sheets={"Mira Vell": "Age: 27\nHistory: she was bullied in middle school."})
    assert rejected(t) is None
    # "Sex" as a sheet field is no sexual content; "Years" as a field is an age.
    t = thread(("Lily Marsh", "Lily waved."), sheets={"Lily Marsh": "**Sex** - F\nYears - 15\nSex: she/her"})
    assert rejected(t) is None
    t["turns"].append({"character": "Lily Marsh", "text": FILLER * 2 + "Lily had sex.", "kind": "ic"})
    assert "age_label" in rejected(t).detail


def test_title_counts_as_text():
    assert rejected(thread(("Dorn Hale", "He waited."), title="Lust for a schoolgirl")) is not None


def test_detail_has_counts_and_rule_names_only_and_evidence_is_short():
    t = thread(*[("Dorn Hale", "She was 14 and they had sex. " * 3)] * 20)
    v = rejected(t)
    assert v.reason == "minor_sexual_content"
    assert "sex" not in v.detail.replace("sexual term", "") and "“" not in v.detail and "14" not in v.detail
    assert 0 < len(v.evidence) <= 12 and all(len(e) < 260 for e in v.evidence)
    assert v.evidence[0].startswith("turn[0] (Dorn Hale): subject_is_age within")


# --- rule file ---------------------------------------------------------------------------------------
def test_user_rules_extend_the_defaults(tmp_path):
    extra = tmp_path / "policy.yaml"
    extra.write_text("sexual_terms:\n  - smooch(?:ed|ing)?\nchild_terms:\n  - whelp\nwindow_words: 3\n")
    policy = load_policy(PolicyConfig(content_policy_rules=str(extra)))
    assert policy.window_words == 3
    t = thread(("Dorn Hale", "The whelp smooched him."))
    assert rejected(t) is None and rejected(t, policy) is not None
    # Defaults are still there; the window is now 3 words.
    assert rejected(thread(("Dorn Hale", "A 14-year-old watched; they had sex.")), policy) is None
    assert rejected(thread(("Dorn Hale", "The 14-year-old had sex.")), policy) is not None


@pytest.mark.parametrize("text,message", [
    ("sexual_termz:\n  - x\n", "unknown keys"),
    ("sexual_terms:\n  - '(unclosed'\n", "bad regular expression"),
    ("minor_exclusions:\n  - a: b\n", "quote a regex"),
    ("age_patterns:\n  - pattern: no age here\n", "needs {age}"),
    ("sexual_terms: sex\n", "must be a list"),
])
def test_bad_user_rules_are_named(tmp_path, text, message):
    extra = tmp_path / "bad.yaml"
    extra.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_policy(PolicyConfig(content_policy_rules=str(extra)))
    with pytest.raises(ValueError, match="not a file"):
        load_policy(PolicyConfig(content_policy_rules=str(tmp_path / "missing.yaml")))


def test_literal_anchors_are_a_necessary_condition():
    assert literal_anchors("rap(?:e|ed|ing)") == {"rape", "raped", "raping"}
    assert literal_anchors(r"\bsex\b") == {"sex"}
    assert literal_anchors("(?:make|made) love") == {"make love", "made love"}
    assert literal_anchors("hand ?jobs?") == {"hand job", "handjob", "hand jobs", "handjobs"}
    assert literal_anchors("love[- ]?making") == {"lovemaking", "love-making", "love making"}
    assert literal_anchors("a|bcd") is None and literal_anchors(r"\w+") is None and literal_anchors("x+yz") is None
    assert literal_anchors("blowjobs?|blow jobs?") == {"blowjob", "blowjobs", "blow job", "blow jobs"}
    # Every default term found by its regex is also found by its anchors, in any case.
    for text in ("SEX", "Sexually", "made LOVE", "love-making", "Orgasmic", "RAPED", "Seductive", "hand job",
                 "Nipples", "between her thighs", "moaned with pleasure", "fucked her", "Kinky", "naked",
                 "She’s NUDE", "İntercourse"):
        assert POLICY.sexual.search(text), text
        assert any(a in _fold(text) for a in POLICY.sexual_anchors), text
        assert POLICY.sexual_anchor_re.search(_fold(text)), text
    for text in ("KIDS", "little Girl", "pre-teen", "Schoolgirl", "7th-grader", "Middle-Schooler", "a minor."):
        assert POLICY.child.search(text) or POLICY.school.search(text), text
        assert any(a in _fold(text) for a in POLICY.minor_anchors), text
        assert POLICY.minor_anchor_re.search(_fold(text)), text


def test_default_rules_are_documented_lists():
    rules = default_rules()
    assert {"sexual_terms", "child_terms", "school_terms", "age_patterns", "minor_exclusions"} <= set(rules)
    assert all(isinstance(t, str) for t in rules["sexual_terms"] + rules["child_terms"])
