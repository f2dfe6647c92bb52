"""Data stages in worker processes (issue 17): the same bytes for any worker count, bounded work in flight, and the
hot-spot shortcuts (ftfy only where it can change the text, the handle pre-check, signatures signed elsewhere) giving
exactly what the slow path gives."""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import ftfy
import pyarrow as pa
import pytest

from benchmarks.corpus import generate_corpus, sample_threads
from gcrp_assets.lib import schemas
from gcrp_assets.lib.clean import markup, parallel
from gcrp_assets.lib.clean.content_policy import check_thread, load_policy
from gcrp_assets.lib.clean.dedup import DedupConfig, SignatureStore, Signer, signatures_array
from gcrp_assets.lib.clean.privacy import HandleScrubber
from gcrp_assets.lib.clean.stage import run_filtered
from gcrp_assets.lib.ingest.stage import run_raw
from gcrp_assets.lib.parquet import ArrowBatchWriter, RowWriter, read_rows
from gcrp_assets.lib.prompts.samples import PromptOptions, load_system_template
from gcrp_assets.lib.prompts.sheets import SheetTemplate
from gcrp_assets.lib.prompts.stage import run_augmented


def _stages(raw: Path, out: Path, workers: int) -> tuple[dict, dict]:
    (out / "filtered").mkdir(parents=True)
    (out / "augmented").mkdir()
    filtered = run_filtered(raw, out / "filtered", batch=8, workers=workers,
                            policy=partial(check_thread, policy=load_policy()))
    augmented = run_augmented(out / "filtered" / "threads.parquet", raw, out / "augmented", SheetTemplate.load(),
                              load_system_template(), PromptOptions(user_character="each"), batch=8, workers=workers)
    return filtered, augmented


def test_outputs_byte_identical_for_any_worker_count(tmp_path):
    """Two worker processes give the bytes and counts of one process: kept threads, rejects (filter rejects and
    duplicates merged in dump order), samples; with duplicates across batches, so the dedup pass is global."""
    corpus = tmp_path / "dump.jsonl"
    generate_corpus(corpus, 120)  # thread k % 100 in (7, 13) copies k - 1; the corpus's HTML, mojibake, handles
    (tmp_path / "raw").mkdir()
    run_raw(corpus, tmp_path / "raw", batch=8)
    raw = tmp_path / "raw" / "threads.parquet"
    one = _stages(raw, tmp_path / "one", workers=1)
    two = _stages(raw, tmp_path / "two", workers=2)
    assert json.dumps(one, sort_keys=True, default=str) == json.dumps(two, sort_keys=True, default=str)
    for name in ("filtered/threads.parquet", "filtered/rejects.parquet", "augmented/samples.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    filtered, augmented = one
    assert filtered["reasons"].get("exact_duplicate") and filtered["threads_kept"] > 16 and augmented["samples"]
    rejects = read_rows(tmp_path / "two" / "filtered" / "rejects.parquet")
    assert [r["line"] for r in rejects] == sorted(r["line"] for r in rejects)  # dump order kept
    assert not list((tmp_path / "two" / "filtered").glob(".work-*"))  # work files removed


def test_ordered_map_keeps_order_and_bounds_work_in_flight():
    pulled = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield -i

    results = parallel.ordered_map(abs, items(), workers=2)
    assert next(results) == 0
    assert len(pulled) <= parallel.WINDOW * 2 + 1  # a window of WINDOW x workers batches, not the whole input
    assert list(results) == list(range(1, 40))


def _slow_pid(i: int) -> tuple[int, int]:
    time.sleep(0.02)
    return i, os.getpid()


def test_this_process_works_while_the_workers_do():
    """`workers = 2`: this process and one spawned worker share the items (this one starts at once, while the
    worker is still importing), and the results come back in input order."""
    results = list(parallel.ordered_map(_slow_pid, range(60), workers=2))
    assert [i for i, _ in results] == list(range(60))
    pids = Counter(pid for _, pid in results)
    assert len(pids) == 2 and pids[os.getpid()] >= 10 and min(pids.values()) >= 5, pids


def _fails_on(i: int, bad: frozenset) -> int:
    if i in bad:
        raise ValueError(f"item {i}")
    return i


@pytest.mark.parametrize("bad", [{0, 1}, {7, 8}])
def test_an_error_comes_out_in_input_order(bad):
    """The first failing item in input order raises, after every earlier result, as in one process. With {0, 1}:
    item 0 goes to the starting worker and item 1 is this process's first, which fails at once and must wait."""
    first = min(bad)
    results = []
    with pytest.raises(ValueError, match=f"item {first}$"):
        for i in parallel.ordered_map(partial(_fails_on, bad=frozenset(bad)), range(40), workers=2):
            results.append(i)
    assert results == list(range(first))


def _pandas_after_conversion(i: int) -> tuple[int, bool]:
    time.sleep(0.05)
    pa.Table.from_pylist([{"i": i}])  # pyarrow's first conversion of Python objects asks about pandas
    return os.getpid(), "pandas" in sys.modules


def test_a_worker_converts_without_importing_pandas():
    """A spawned worker's pyarrow does not import pandas to convert rows (0.2-0.4 s per worker); the run's process
    is left as it is."""
    results = list(parallel.ordered_map(_pandas_after_conversion, range(8), workers=2))
    in_workers = [has_pandas for pid, has_pandas in results if pid != os.getpid()]
    assert in_workers and not any(in_workers)


def test_worker_count():
    assert parallel.worker_count(0, 1000) == min(parallel.usable_cores(), parallel.MAX_AUTO_WORKERS)
    assert parallel.worker_count(4, 2) == 2 and parallel.worker_count(3, 0) == 1
    with pytest.raises(ValueError):
        parallel.worker_count(-1, 5)
    assert not parallel.can_send(lambda thread: None)  # such a policy keeps the stage in the run's process
    # whole batches in one process, quarters with workers (never an empty item)
    assert parallel.unit_rows(512, 1) == 512 and parallel.unit_rows(512, 2) == 128 and parallel.unit_rows(5, 3) == 2
    assert parallel.unit_rows(1, 2) == 1


def test_arrow_batch_writer_writes_row_writer_bytes(tmp_path):
    rows = [{"dump": "d", "thread_id": f"t{i}", "file": "f", "line": i, "stage": "s", "reason": "r",
             "detail": "x" * i, "record": "{}", "evidence": None if i % 3 else "[]"} for i in range(23)]
    with RowWriter(tmp_path / "rows.parquet", schemas.REJECTS, 5) as writer:
        writer.extend(rows)
    tables = ArrowBatchWriter(tmp_path / "tables.parquet", schemas.REJECTS, 5)
    for start, stop in ((0, 3), (3, 3), (3, 12), (12, 23)):  # uneven pieces, one empty
        tables.write(pa.Table.from_pylist(rows[start:stop], schema=schemas.REJECTS))
    assert tables.close() == 23
    assert (tmp_path / "rows.parquet").read_bytes() == (tmp_path / "tables.parquet").read_bytes()


def test_ftfy_runs_wherever_it_could_change_the_text():
    texts = [markup.valid_unicode(p["text"]) for t in sample_threads() for p in t["posts"]]
    texts += ["cafÃ©", "â€œhiâ€\x9d", "Tom &amp; Jerry", "a\u2028b", "\x1b[31mred", "x\r\ny", "end.\nÃ  la",
              "Ã\xa0 la", "вЂ™", "ΒΓΞ", "“curly” ‘quotes’ — fine…", "「こんにちは！」", "naïve"]
    skipped = [t for t in texts if not markup.may_need_ftfy(t)]
    assert len(skipped) > len(texts) // 2
    assert all(ftfy.fix_text(t, markup._FTFY_CONFIG) == t for t in skipped)
    assert markup.may_need_ftfy("end.\nÃ  la") and markup.fix_encoding("cafÃ©") == "café"
    # The punctuation of ordinary English text never makes a line bad by itself (why `_MOJIBAKE_CHARS` omits it).
    rng = random.Random(17)
    alphabet = markup._PLAIN_PUNCTUATION + "aZ .,!?'\"\t\n0-"
    for _ in range(3000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        assert not ftfy.badness.is_bad(line), repr(line)


def test_handle_precheck_changes_nothing():
    scrubber = HandleScrubber(["nightowl_77", "midnight.diner", "Kat", "Ballbuster Steve"],
                              protected_names=["Mira"])
    precheck_off = HandleScrubber(scrubber.handles)
    precheck_off._keys = None  # the pattern runs on every text
    rng = random.Random(3)
    pieces = ["nightowl_77", "NIGHTOWL_77", "@nightowl_77,", "midnight.diner", "midnight", "\u212aat", "kat:",
              "ballbuster steve", "“Kat”", "café", "Katherine", "xkat", "@kat", "bob@kat.com", "Mira", "—", "\n",
              "the", "door", ".", ",", "(brb, @Kat)"]
    for _ in range(2000):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
        assert scrubber.scrub(text, {"Kat": "Mira Vell"}) == precheck_off.scrub(text, {"Kat": "Mira Vell"}), text
        assert scrubber.find(text) == precheck_off.find(text), text
    assert not scrubber.may_contain_handle("nothing to see “here”")
    assert scrubber.may_contain_handle("the \u212aAT said")  # Kelvin sign: the pattern matches it as `k`


def test_only_texts_the_handle_pattern_ran_on_can_leak():
    """`scrub(…, may_leak)` leaves out only results that hold no handle: what the leak check (`_facts`) skips."""
    scrubber = HandleScrubber(["nightowl_77", "midnight.diner", "Kat", "Ballbuster Steve", "night owl"])
    rng = random.Random(5)
    pieces = ["nightowl_77", "@nightowl_77,", "midnight", ".diner", "diner", "Kat", "@Kat:", "kat@x.com", "(", ")",
              "]", ",", ";", ":", " ", "  ", "\t", "\n", "\n\n\n", "Ballbuster", "Steve", "night", "owl", "@", "x",
              "-- sig", "RE: hi", "—", "“", "@bob", "'", "."]
    suspects = leaks = 0
    for _ in range(6000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        may_leak: list[str] = []
        out = scrubber.scrub(text, {"Kat": "Mira Vell"}, may_leak)
        assert may_leak in ([], [out])
        if not may_leak:
            assert scrubber.find(out) == [], (text, out)
        suspects += bool(may_leak)
        leaks += bool(scrubber.find(out))
    assert suspects > 1000 and leaks > 10  # handles the pattern misses do survive, and are caught as suspects
    may_leak = []
    assert scrubber.scrub("so, Night  Owl said", None, may_leak) == "so, Night Owl said" and may_leak


def test_tidy_text_skips_only_steps_that_change_nothing():
    """`split_ooc(…, tidy=True)` and `scrub(…, tidy=True)` on what `clean_thread` hands them (`to_text`'s output, maybe
    less a name header line) give what the full tidying gives: posts and sheets of the benchmark corpus and random
    texts of OOC remarks, mentions, handles, brackets, spaces and markup."""
    from gcrp_assets.lib.clean.ooc import split_ooc

    scrubber = HandleScrubber(["nightowl_77", "Kat", "night owl"], protected_names=["Mira"])
    raws = [p["text"] for t in sample_threads() for p in t["posts"]] + [
        c["sheet"] for t in sample_threads() for c in t["characters"] if c.get("sheet")]
    pieces = ["((brb))", "[[sorry]]", "(OOC: x)", "[OOC - y]", "OOC: later", "She left. OOC: brb", "@nightowl_77 go!",
              "@Kat", "nightowl_77,", "Kat:", "Night  Owl", " , ", "( )", "[ ]", "x ,)", "a ;]", "(brb, @Kat)", "[b]",
              "[/b]", "<p>a</p>", "<br>", "\n", "\n\n\n", "  ", "\t", ".", " !", "?", "word", "RE: hi\n", "\n-- sig",
              "bob@kat.com", "**Mira:**\n", "Mira", "“", "—", "&amp;", "\u00a0"]
    rng = random.Random(9)
    raws += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 14))) for _ in range(3000)]
    differed = 0
    for raw in raws:
        text = markup.to_text(raw)
        for tidy_text in (text, text[text.index("\n") + 1:].lstrip() if "\n" in text else text):
            full = split_ooc(tidy_text)
            assert split_ooc(tidy_text, tidy=True) == full, repr(tidy_text)
            leaks_full: list[str] = []
            leaks_tidy: list[str] = []
            body = scrubber.scrub(full.text, {"Kat": "Mira Vell"}, leaks_full)
            assert scrubber.scrub(full.text, {"Kat": "Mira Vell"}, leaks_tidy, tidy=True) == body, repr(full.text)
            assert leaks_tidy == leaks_full
            differed += body != full.text or full.text != tidy_text
    assert differed > 500  # the steps did change many of them


def test_signatures_signed_elsewhere_resolve_the_same():
    config = DedupConfig()
    texts = ["the quick brown fox jumps over the lazy dog " * 3, "the quick brown fox jumps over the lazy dog " * 3,
             "the quick brown fox leaps over the lazy dog " * 3 + "again", "", "something else entirely here"]
    direct, signed = SignatureStore(config), SignatureStore(config)
    signer = Signer(config)
    keys = [("d", f"t{i}") for i in range(len(texts))]
    for key, text in zip(keys, texts):
        direct.add(*key, text=text)
    signed.add_signed(keys, signatures_array([signer.sign_text(t) for t in texts], signer))
    assert direct.resolve() == signed.resolve() and direct.resolve()


def test_markup_gates_change_nothing():
    """The BBCode rules gated by the tag names present, the emphasis repair gated by `_GLUED_*`, the sentence spacing
    gated by `_MARK_BEFORE_CAPITAL`, the empty brackets by `_EMPTY_BRACKETS_GATE`, `drop_controls`,
    `drop_space_before_punctuation` and the `_GROUP_1` replacement give what the ungated rules give, on random
    texts built from the pieces that matter."""
    def ungated_bbcode(text: str) -> str:
        for pattern, replacement in markup._BBCODE_RULES:
            text = pattern.sub(replacement, text)
        return text

    def ungated_emphasis(text: str) -> str:
        return markup._unglue(markup._ITALIC_SPAN, markup._unglue(markup._BOLD_SPAN, text))

    def ungated_sentence_spacing(text: str) -> str:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(markup, "_MARK_BEFORE_CAPITAL", re.compile(""))  # matches every text
            return markup.fix_sentence_spacing(text)

    def six_tests_bracket_gate(text: str) -> str:  # the gate's meaning, written as the tests it replaces
        if "()" in text or "[]" in text or "<>" in text or "( " in text or "[ " in text or "< " in text:
            text = markup._EMPTY_BRACKETS.sub("", text)
        return text

    rng = random.Random(11)
    changed = {"bbcode": 0, "emphasis": 0, "sentence": 0, "brackets": 0, "punctuation": 0}
    tags = ["[b]", "[/b]", "[B]", "[i]", "[/I]", "[u]", "[/u]", "[url]", "[/url]", "[url=x]", "[img]", "[/img]",
            "[quote=Bob]", "[/quote]", "[*]", "[list]", "[td]", "[code]", "[hr]", "[font=Arial]", "[size=3]",
            "[/color]", "[", "/", "url]", "b]", "[/", "[[", "]", "ſ", "bold", " ", "\n", "<br>", "x", "<", "&amp;",
            "&"]
    marks = ["*", "**", "***", "a", "é", "漢", "1", "_", " ", "\n", ".", "smiles", "²", "\u3000", "-"]
    prose = ["door", "door.", "now!?", "?", "Then", "Then", "T", "he", "I", "A", "x", " ", "\t", "\n", "(", ")", "[",
             "]", "<", ">", "É", "é", ",", ";", ":"]
    for _ in range(6000):
        text = "".join(rng.choice(tags) for _ in range(rng.randint(1, 12)))
        assert markup.bbcode_to_html(text) == ungated_bbcode(text), text
        assert markup.looks_like_markup(text) == bool(markup._HTML_TAG.search(text) or markup._BBCODE_TAG.search(text))
        changed["bbcode"] += ungated_bbcode(text) != text
        text = "".join(rng.choice(marks) for _ in range(rng.randint(1, 14)))
        assert markup.fix_glued_emphasis(text) == ungated_emphasis(text), text
        changed["emphasis"] += ungated_emphasis(text) != text
        text = "".join(rng.choice(prose) for _ in range(rng.randint(1, 14)))
        assert markup.fix_sentence_spacing(text) == ungated_sentence_spacing(text), text
        changed["sentence"] += ungated_sentence_spacing(text) != text
        assert markup.remove_urls(text) == six_tests_bracket_gate(text), text
        changed["brackets"] += six_tests_bracket_gate(text) != text
        assert markup.drop_space_before_punctuation(text) == markup._SPACE_BEFORE_PUNCT.sub("", text), text
        changed["punctuation"] += markup._SPACE_BEFORE_PUNCT.sub("", text) != text
    assert min(changed.values()) > 100, changed  # the rules did work on many of them
    controls = [chr(c) for c in range(0x20)] + ["\x7f", "\x80", "\x85", "é", "\u2028", "\ud800", "a", " ",
                                                 "\U0001F600"]
    for _ in range(3000):
        text = "".join(rng.choice(controls) for _ in range(rng.randint(0, 8)))
        assert markup.drop_controls(text) == markup._CONTROL.sub("", text), repr(text)
    assert markup.bbcode_to_html("[[u]url]http://x[/url]") == ""  # a tag made by removing another one
    assert markup._SERIALIZED_BREAK.sub(markup._GROUP_1, "a<br />\nb</p> \nc") == "a<br />b</p>c"
