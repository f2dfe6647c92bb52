"""Property tests: corrupted dumps never crash reading, cleaning, filtering, dedup or prompts, and never
lose a thread (every thread read is kept or rejected; every malformed line is rejected with its number)."""

import json
import re

import pyarrow as pa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gcrp_assets.lib import schemas
from gcrp_assets.lib.clean.cleaning import CleaningOptions, clean_thread, dump_scrubber
from gcrp_assets.lib.clean.dedup import find_duplicates
from gcrp_assets.lib.ingest.dumps import read_dump
from gcrp_assets.lib.clean.filters import FilterRules, rejection_reason
from gcrp_assets.lib.clean.markup import to_text
from gcrp_assets.lib.clean.ooc import split_ooc
from gcrp_assets.lib.clean.privacy import HandleScrubber
from gcrp_assets.lib.prompts.samples import PromptOptions, build_samples, load_system_template
from gcrp_assets.lib.prompts.sheets import SheetTemplate, normalize_sheet
from gcrp_assets_tests.factories import HANDLES, thread

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
TEMPLATE = SheetTemplate.load()
SYSTEM = load_system_template()

_TAGS = ["<p>", "</p>", "<b>", "</b>", "<i>", "<br>", "<div>", "</div>", "<blockquote>", "</blockquote>", "<img src=x>",
         "<a href='https://x.y'>", "</a>", "<script>", "</script>", "<table><tr><td>", "[b]", "[/b]", "[quote]",
         "[/quote]", "[url=https://z]", "[/url]", "[img]", "[/img]", "[list][*]", "[/list]", "&amp;", "&nbsp;",
         "&#8217;", "<", ">", "((", "))", "[[", "]]", "(OOC: ", "OOC: ", "@", "\n", "\r\n", " ", "**", "*", "!!!!!!",
         "https://forum.example/t/1", "â€™", "\u200b", "\x00", "RE: ", "-- "]
soup = st.lists(st.one_of(st.sampled_from(_TAGS), st.text(max_size=12)), max_size=25).map("".join)
unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
post_text = st.one_of(soup, unicode_text, st.sampled_from(["", " ", "<br>", "...", "lol"]),
                      st.integers(1, 5).map(lambda n: "word " * (6000 * n)))  # huge posts

OPTIONAL = [("title",), ("tags",), ("characters",), ("forum",), ("url",), ("posts", "character"), ("posts", "post_id"),
            ("posts", "posted_at"), ("characters", "player"), ("characters", "sheet")]


@st.composite
def good_threads(draw, index: int) -> dict:
    record = thread(f"t{index}", draw(st.integers(1, 9)), draw(st.integers(1, 12)))  # no posts: a `no_posts` reject
    for post in record["posts"]:
        if draw(st.integers(0, 3)) == 0:
            post["text"] = draw(post_text)
        if draw(st.integers(0, 9)) == 0:
            post["author"] = draw(st.sampled_from(HANDLES + ["", "ghost"]))
    for character in record["characters"]:
        if draw(st.integers(0, 3)) == 0:
            character["sheet"] = draw(soup)
    for path in draw(st.lists(st.sampled_from(OPTIONAL), max_size=4, unique=True)):
        if len(path) == 1:
            record.pop(path[0], None)
        else:
            for item in record.get(path[0]) or []:
                item.pop(path[1], None)
    if draw(st.integers(0, 4)) == 0:
        record["title"] = draw(soup)
    return record


def _truncate(line: str, cut: int) -> str:
    return line[: max(1, min(cut, len(line) - 1))]


@st.composite
def bad_lines(draw, index: int) -> bytes:
    valid = json.dumps(thread(f"bad{index}", 2, 3))
    kind = draw(st.sampled_from(["truncate", "garble", "not_object", "no_posts", "empty_posts", "no_id",
                                 "posts_not_list", "not_utf8", "bad_post", "duplicate_id"]))
    if kind == "truncate":
        return _truncate(valid, draw(st.integers(1, len(valid)))).encode()
    if kind == "garble":
        at = draw(st.integers(0, len(valid)))
        return (valid[:at] + "\x00" + valid[at:]).encode()
    if kind == "not_object":
        value = draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.text(max_size=5)))
        return json.dumps(value).encode()
    if kind == "not_utf8":
        return valid.encode()[:10] + b"\xff\xfe" + valid.encode()[10:]
    record = json.loads(valid)
    if kind == "no_posts":
        del record["posts"]
    elif kind == "empty_posts":
        record["posts"] = []
    elif kind == "no_id":
        record.pop("thread_id")
    elif kind == "posts_not_list":
        record["posts"] = {"a": 1}
    elif kind == "bad_post":
        del record["posts"][1]["text"]
    else:
        record["thread_id"] = "t0"  # the first good thread's id, already used
    return json.dumps(record).encode()


@st.composite
def dumps(draw):
    n_good = draw(st.integers(1, 6))
    good = [draw(good_threads(i)) for i in range(n_good)]
    if draw(st.booleans()):  # a copy under another id: a duplicate for dedup to find
        good.append(dict(json.loads(json.dumps(good[0])), thread_id=f"t{n_good}"))
    bad = [draw(bad_lines(i)) for i in range(draw(st.integers(0, 4)))]
    lines: list[tuple[str, bytes]] = [("good", json.dumps(good[0], ensure_ascii=draw(st.booleans())).encode())]
    rest = [("good", json.dumps(t).encode()) for t in good[1:]] + [("bad", b) for b in bad]
    rest = draw(st.permutations(rest))
    for item in rest:
        if draw(st.integers(0, 5)) == 0:
            lines.append(("blank", b"  "))
        lines.append(item)
    if draw(st.booleans()):  # a lone surrogate escape, legal JSON but not writable UTF-8
        lines[0] = ("good", lines[0][1].replace(b'"text": "', b'"text": "\\ud800', 1))
    return good, lines


def _writable(value) -> None:
    """Every string in a nested structure can be written as UTF-8 (Parquet, tokenizer)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for v in value.values():
            _writable(v)
    elif isinstance(value, list):
        for v in value:
            _writable(v)


@SETTINGS
@given(data=dumps(), policy=st.sampled_from(["strip", "keep", "drop_post"]))
def test_corrupted_dumps_never_crash_and_never_lose_a_thread(tmp_path_factory, data, policy):
    good, lines = data
    path = tmp_path_factory.mktemp("dump") / "fuzz.jsonl"
    path.write_bytes(b"\n".join(line for _, line in lines) + b"\n")
    contents = read_dump(path)

    numbered = [(n, kind) for n, (kind, _) in enumerate(lines, start=1) if kind != "blank"]
    assert contents.lines == len(numbered) == len(contents.threads) + len(contents.rejects)
    assert sorted(t["thread_id"] for t in contents.threads) == sorted(t["thread_id"] for t in good)
    bad_numbers = sorted(n for n, kind in numbered if kind == "bad")
    assert sorted(r["line"] for r in contents.rejects) == bad_numbers
    assert all(r["detail"].startswith(f"fuzz.jsonl:{r['line']}:") and r["reason"] for r in contents.rejects)

    scrubber = dump_scrubber(contents.threads)
    options = CleaningOptions(ooc_policy=policy)
    kept, rejected = [], {}
    for raw in contents.threads:
        cleaned = clean_thread(raw, scrubber, options)
        verdict = rejection_reason(cleaned, FilterRules())
        if verdict:
            rejected[raw["thread_id"]] = verdict[0]
        else:
            kept.append(cleaned)
    for duplicate in find_duplicates(kept):
        rejected[duplicate.thread_id] = duplicate.reason
    kept = [t for t in kept if t["thread_id"] not in rejected]
    for reason in set(rejected.values()) | {r["reason"] for r in contents.rejects}:
        event(f"reject: {reason}")
    event(f"kept: {min(len(kept), 2)}")
    assert {t["thread_id"] for t in kept} | set(rejected) == {t["thread_id"] for t in good}
    assert not {t["thread_id"] for t in kept} & set(rejected)
    _writable(kept)
    pa.Table.from_pylist(kept, schema=schemas.FILTERED_THREADS)
    for cleaned in kept:
        for turn in cleaned["turns"]:
            assert turn["text"].strip() and not scrubber.find(turn["text"])
        assert not any(len(t["text"]) > FilterRules().max_post_chars for t in cleaned["turns"])
        samples = build_samples(cleaned, TEMPLATE, SYSTEM, options=PromptOptions(user_character="each", max_variants=0))
        assert len({s["sample_id"] for s in samples}) == len(samples) == len(cleaned["characters"])
        _writable(samples)
        pa.Table.from_pylist(samples, schema=schemas.SAMPLES)


@SETTINGS
@given(text=st.one_of(soup, unicode_text))
def test_text_cleaners_return_tidy_writable_text(text):
    out = to_text(text)
    out.encode("utf-8")
    assert out == out.strip() and "\n\n\n" not in out and not re.search(r"[\x00-\x08\x0b-\x1f\ud800-\udfff]", out)
    split = split_ooc(out)
    assert split.text == split.text.strip() and all(r for r in split.remarks)
    scrubbed = HandleScrubber(HANDLES).scrub(out, {"nightowl_77": "Mira Vell"})
    assert not HandleScrubber(HANDLES).find(scrubbed)


_LABELS = ["Name", "Age", "AGE", "Race/Species", "Looks", "Appearance & Style", "History", "Flaws", "Gear", "Notes",
           "Personality", "Familiar", "Class", "Job"]
sheet_lines = st.lists(st.one_of(
    st.tuples(st.sampled_from(_LABELS), st.sampled_from([": ", " - ", " | ", ":** ", ": "]),
              st.text("abcdefg ,.;", max_size=30)).map(lambda t: "**" * (t[1] == ":** ") + "".join(t)),
    st.text("abcdefg ,.\n-*", max_size=40), st.just(""), st.just("- Height: tall")), max_size=15).map("\n".join)


@SETTINGS
@given(sheet=sheet_lines)
def test_sheet_rules_never_invent_a_word(sheet):
    words = lambda s: set(re.findall(r"[^\W_]+", s.casefold()))  # noqa: E731
    rendered = normalize_sheet("Mira Vell", sheet, TEMPLATE)
    template_words = words(" ".join(f.name for f in TEMPLATE.fields))
    assert words(rendered) - template_words - words("Mira Vell") <= words(sheet)
    assert rendered.startswith("**Character Name**: Mira Vell")
