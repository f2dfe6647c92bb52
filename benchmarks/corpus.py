"""The benchmarks' corpora, in one place: everything is derived from the embedded sample corpus
(`gcrp_assets/sample_corpus/inbox/`) or generated from a fixed seed, so every run sees the same data.

- `sample_threads()`: the sample corpus's raw thread records (two or more posts), as read from its JSONL;
- `sample_samples()`: the sample corpus through the library's data stages (read → clean → filter → samples,
  the stages' defaults, the starter as the user), for training and tokenized-row benchmarks;
- `generate_corpus(path, n)`: a forum dump of `n` threads (JSONL, written line by line, never held whole):
  thread k takes the structure of a sample-corpus thread and draws every post's text from the pool of all
  sample-corpus posts with a per-thread RNG; one thread in 100 is an exact copy of the previous one, one in
  100 a near copy (three words swapped), one line in 1,000 truncated JSON; `head_lines` cuts its first lines
  (the N-thread corpus is the first N lines of the larger one);
- `synthetic_samples(n)`: samples (system prompt, roster, turns) generated from a word list, 2-7
  characters, non-alternating turns, every `long_every`-th thread 40-80 turns, streamed.

Nothing here imports Dagster (it would raise the data-stage benchmarks' memory floor), and gcrp_assets only inside
the functions that need it.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

# The sample corpus, found next to this file (not by importing gcrp_assets: `benchmarks.data_stages` runs the
# stages of an older checkout in child processes, which must import that checkout's package, not this one's).
SAMPLE_INBOX = Path(__file__).resolve().parent.parent / "gcrp_assets" / "sample_corpus" / "inbox"


# ---------------------------------------------------------------------------------------------------
# The sample corpus, raw and as samples
# ---------------------------------------------------------------------------------------------------
def sample_dumps() -> list[Path]:
    from gcrp_assets.lib.ingest.dumps import find_dumps

    return find_dumps(SAMPLE_INBOX)


def sample_threads() -> list[dict]:
    """The sample corpus's raw thread records with at least two posts (malformed lines skipped)."""
    threads = []
    for path in sample_dumps():
        for line in path.read_text("utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record.get("posts"), list) and len(record["posts"]) >= 2:
                threads.append(record)
    return threads


def sample_samples(user_character: str = "starter") -> list[dict]:
    """The sample corpus through the plain library stages (no Dagster): every dump read, cleaned and
    filtered with the default rules, then turned into samples."""
    from gcrp_assets.lib.clean.cleaning import CleaningOptions, clean_thread, dump_scrubber
    from gcrp_assets.lib.clean.filters import FilterRules, rejection_reason
    from gcrp_assets.lib.ingest.dumps import read_dump
    from gcrp_assets.lib.prompts.samples import build_samples, load_system_template
    from gcrp_assets.lib.prompts.sheets import SheetTemplate

    sheet, system = SheetTemplate.load(None), load_system_template(None)
    samples = []
    for dump in sample_dumps():
        threads = read_dump(dump).threads
        scrubber = dump_scrubber(threads)
        for thread in threads:
            cleaned = clean_thread(thread, scrubber, CleaningOptions())
            if rejection_reason(cleaned, FilterRules()) is None:
                samples += build_samples(cleaned, sheet, system, user_character)
    return samples


# ---------------------------------------------------------------------------------------------------
# A large forum dump from the sample corpus
# ---------------------------------------------------------------------------------------------------
_SWAPS = [("said", "replied"), ("looked", "glanced"), ("quietly", "softly"), ("slowly", "carefully"),
          ("moment", "second"), ("voice", "tone"), ("the", "that")]


def generate_corpus(path: Path, n: int) -> None:
    """Write an `n`-thread forum dump (canonical JSONL) to `path`, deterministically."""
    sources = sample_threads()
    pool = [p["text"] for t in sources for p in t["posts"]]
    previous: dict | None = None
    with open(path, "w", encoding="utf-8") as out:
        for k in range(n):
            rng = random.Random(f"gcrp-bench/{k}")
            if previous is not None and k % 100 in (7, 13):
                thread = json.loads(json.dumps(previous))
                if k % 100 == 13:  # near copy: a few words swapped
                    swaps = 0
                    for post in thread["posts"]:
                        for old, new in _SWAPS:
                            if swaps < 3 and re.search(rf"\b{old}\b", post["text"]):
                                post["text"] = re.sub(rf"\b{old}\b", new, post["text"], count=1)
                                swaps += 1
            else:
                source = sources[rng.randrange(len(sources))]
                thread = json.loads(json.dumps(source))
                for post in thread["posts"]:
                    post["text"] = pool[rng.randrange(len(pool))]
            thread["thread_id"] = f"b-{k}"
            for i, post in enumerate(thread["posts"]):
                post["post_id"] = f"b-{k}-{i}"
            previous = thread
            line = json.dumps(thread, ensure_ascii=False)
            if k % 1000 == 999:
                line = line[: len(line) // 2]  # a truncated line: rejected with its number
            out.write(line + "\n")


def head_lines(source: Path, target: Path, n: int) -> None:
    with open(source, "rb") as inp, open(target, "wb") as out:
        for _, line in zip(range(n), inp):
            out.write(line)


# ---------------------------------------------------------------------------------------------------
# Synthetic samples with long threads (tokenization)
# ---------------------------------------------------------------------------------------------------
WORDS = ("the a and of to in was his her he she they it that with as at for on but not had were said "
         "door night blade shadow light tavern sword voice eyes hand smile window cold rain fire steel "
         "moment glance silence laughter whisper breath floor table glass wine bottle coat mask crowd "
         "music corridor stairs guard captain mage spell ward rune ember frost storm harbor ship rope "
         "walked turned looked stepped nodded shrugged grinned frowned sighed paused waited listened "
         "slowly quietly briefly finally suddenly carefully never always again still almost perhaps").split()
NAMES = ["Ballbuster Steve", 'Altair "Arty" Enzo', "Sukuna Gojo", "Keri Wolf", "Satori", "Nanashi", "Anon",
         "Mira Vale", "Tobias Crane", "Lady Ysolde", "Brother Hal", "Quill", "Renn", "Odette Marsh",
         "Captain Ferro", "Juniper", "Dax", "Ilse Varga", "Morrow", "Pell"]


def _sentence_pool(rng: random.Random, size: int = 4000) -> list[str]:
    pool = []
    for _ in range(size):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 18))]
        text = " ".join(words)
        text = text[0].upper() + text[1:] + rng.choice([".", ".", ".", "!", "?", "..."])
        kind = rng.random()
        if kind < 0.3:
            text = f'"{text}"'
        elif kind < 0.4:
            text = f"*{text}*"
        pool.append(text)
    return pool


def synthetic_samples(n: int, seed: int = 0, long_every: int = 10) -> Iterator[dict]:
    """`n` synthetic samples, deterministic for a seed; every `long_every`-th has 40-80 turns."""
    rng = random.Random(seed)
    pool = _sentence_pool(rng)
    for i in range(n):
        cast = rng.sample(NAMES, rng.randint(2, 7))
        user, others = cast[0], cast[1:]
        if i % long_every == 0:
            n_turns = rng.randint(40, 80)
        else:
            n_turns = rng.randint(6, 20) if rng.random() < 0.75 else rng.randint(21, 39)
        roster = "\n---\n".join(f"{c} # {{char{k}}}\nCharacter Bio: {' '.join(rng.choices(pool, k=3))}"
                                for k, c in enumerate(others, 1))
        system = (f"You are involved in a multi-character internet-style roleplaying session with a human user, "
                  f"who is playing as {user}. Do not generate dialogue for the user's character, {user}.\n\n"
                  f"[Human User]\n{user} # {{user}}\nCharacter Bio: {' '.join(rng.choices(pool, k=2))}\n\n"
                  f"[Involved Characters]\n{roster}\n\nThe roleplay begins now.")
        turns = []
        for _ in range(n_turns):
            is_user = rng.random() < 0.35
            paragraphs = [" ".join(rng.choices(pool, k=rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
            turns.append({"role": "user" if is_user else "model", "name": user if is_user else rng.choice(others),
                          "text": "\n\n".join(paragraphs)})
        yield {"sample_id": f"bench-{seed}-{i}", "thread_key": f"bench/t{i}", "user_character": user,
               "system": system, "turns": turns}


def batched(items: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
