"""The embedded sample corpus: reproducible from its generator, and it exercises every data stage."""

import pytest

from gcrp_assets.orchestration.resources import packaged_inbox
from gcrp_assets.lib.clean.cleaning import clean_thread, dump_scrubber
from gcrp_assets.lib.ingest.dumps import find_dumps, read_dump
from gcrp_assets.lib.clean.filters import FilterRules, rejection_reason
from tools.sample_corpus import generate


def test_committed_corpus_is_exactly_what_the_generator_writes(tmp_path):
    generate.write_inbox(tmp_path)
    committed = {p.name: p.read_bytes() for p in find_dumps(packaged_inbox())}
    regenerated = {p.name: p.read_bytes() for p in find_dumps(tmp_path)}
    assert committed == regenerated and len(committed) == 2


@pytest.fixture(scope="module")
def outcomes():
    """thread_id -> reject reason (None when kept), through the real reader, cleaner and filters."""
    result, bad_lines = {}, []
    for path in find_dumps(packaged_inbox()):
        contents = read_dump(path)
        bad_lines += [f"{r['dump']}:{r['line']}" for r in contents.rejects]
        scrubber = dump_scrubber(contents.threads)
        for thread in contents.threads:
            verdict = rejection_reason(clean_thread(thread, scrubber), FilterRules())
            result[thread["thread_id"]] = verdict[0] if verdict else None
    return result, bad_lines


def test_at_least_sixty_threads_and_the_malformed_lines_are_found(outcomes):
    result, bad_lines = outcomes
    assert len(result) + len(bad_lines) >= 60
    assert sorted(bad_lines) == sorted(generate.FEATURES["malformed_invalid_json"]
                                       + generate.FEATURES["malformed_missing_posts"])


def test_each_planted_reject_is_rejected_for_its_reason(outcomes):
    result, _ = outcomes
    expected = {"reject_too_few_posts": {"too_few_turns"}, "reject_single_character": {"too_few_characters"},
                "reject_too_many_characters": {"too_many_characters"},
                "reject_mostly_empty": {"empty_posts", "too_few_turns"}}
    for feature, reasons in expected.items():
        for thread_id in generate.FEATURES[feature]:
            assert result[thread_id] in reasons, (feature, thread_id, result[thread_id])
    for thread_id in generate.FEATURES["good"]:
        assert result[thread_id] is None, thread_id


def test_every_character_count_from_two_to_seven_is_kept(outcomes):
    result, _ = outcomes
    for n in range(2, 8):
        assert any(result[t] is None for t in generate.FEATURES[f"good_{n}_characters"])
