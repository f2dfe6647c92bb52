"""Exact and near-duplicate threads, within one dump or across dumps.

A thread's text for deduplication is its turns' text, joined. Two tests, in this order:

- exact: the same *normalized* text (case-folded, every run of non-word characters one space),
  by a 64-bit prefix of its SHA-256 -> reason `exact_duplicate`;
- near: MinHash (datasketch 2's `affine32` scheme, `minhash_permutations` permutations, fixed seed; computed by
  `Permutations`, checked against datasketch in the tests) over word shingles of
  `shingle_words` words (hashed by `shingle_hashes`); candidate pairs come from LSH banding (bands and rows chosen like
  datasketch's `MinHashLSH` for `near_duplicate_threshold`); a candidate is a duplicate when the
  MinHash-estimated Jaccard similarity is at least `near_duplicate_threshold` -> reason `near_duplicate`.

Which copy survives is deterministic and independent of input order: threads are visited by
(dump name, thread_id); a thread is dropped when it matches an earlier thread that was kept, and
the earliest such thread is named as its original. Threads with no words are never duplicates.

Memory: per thread only a small signature is held (8 bytes exact hash + 8 bytes per LSH band);
the MinHash rows (4 bytes per permutation) live in memory or, with `SignatureStore(spill_dir=…)`,
in a file read back only for candidate pairs. So a caller can stream threads in batches
(`SignatureStore.add`), then `resolve` once.

Entry points:

- `find_duplicates(threads, config)`: within whatever it is given (filtered_threads: one dump);
- `cross_dump_duplicates(threads_or_samples, config)`: only pairs whose original is in another
  dump; accepts cleaned threads or augmented samples (several samples of one thread count once);
- `drop_cross_dump_duplicates(samples, config)`: the samples to keep, and what was dropped and
  why, for `tokenized_parquet`, the first stage that sees every dump partition.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gcrp_assets.lib.clean.privacy import ASCII_WORD_BYTES

_WORDS = re.compile(r"\w+")
# The non-ASCII characters of ordinary English text (curly quotes, ellipsis, dashes, no-break space): none is a word
# character and casefolding leaves each as it is, so a casefolded text whose only non-ASCII characters are these
# has the same words with them read as spaces (`casefolded_words`; `test_dedup` checks both properties).
_NON_WORD_PUNCTUATION = "\u2019\u2018\u201c\u201d\u2026\u2013\u2014\xa0"
_CHUNK = 4096


# Seed of the MinHash permutations: fixed, so that signatures (and which copy survives) never depend on the run.
MINHASH_SEED = 1


@dataclass(frozen=True)
class DedupConfig:
    """Duplicate detection settings (also `FilterConfig`'s fields: one declaration, `orchestration.settings`)."""
    dedup_exact: bool = field(default=True, metadata={
        "help": "Reject exact duplicates (same normalized text) within the dump (exact_duplicate); the earliest "
                "thread_id is kept."})
    dedup_near: bool = field(default=True, metadata={
        "help": "Reject near duplicates within the dump (near_duplicate): MinHash/LSH over word shingles; the "
                "earliest thread_id is kept."})
    near_duplicate_threshold: float = field(default=0.8, metadata={
        "help": "MinHash-estimated Jaccard similarity of word shingles at or above which a thread is a near "
                "duplicate."})
    shingle_words: int = field(default=5, metadata={"help": "Words per shingle for near-duplicate detection."})
    minhash_permutations: int = field(default=128, metadata={
        "help": "MinHash permutations for near-duplicate detection."})

    def __post_init__(self) -> None:
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {self.near_duplicate_threshold}")
        if self.shingle_words < 1 or self.minhash_permutations < 2:
            raise ValueError("shingle_words must be >= 1 and minhash_permutations >= 2")


@dataclass(frozen=True)
class Duplicate:
    dump: str
    thread_id: str
    reason: str               # "exact_duplicate" | "near_duplicate"
    original_dump: str
    original_thread_id: str
    similarity: float         # 1.0 for exact duplicates, else the MinHash estimate

    @property
    def key(self) -> tuple[str, str]:
        return self.dump, self.thread_id

    @property
    def detail(self) -> str:
        what = "same normalized text as" if self.reason == "exact_duplicate" else \
            f"estimated Jaccard {self.similarity:.3f} with"
        return f"{what} {self.original_dump}/{self.original_thread_id} (kept)"


# ---------------------------------------------------------------------------------------------
# Text and signatures
# ---------------------------------------------------------------------------------------------
def thread_text(thread: dict) -> str:
    """The text a thread is compared by: its turns (cleaned thread or sample), in order."""
    return "\n".join(t.get("text") or "" for t in thread.get("turns") or [])


def casefolded_words(text: str) -> list[str]:
    """The words of `text`, casefolded: `_WORDS.findall(text.casefold())`, without the regular expression (a third of
    the time) when the casefolded text is ASCII but for `_NON_WORD_PUNCTUATION`."""
    folded = text.casefold()
    if not folded.isascii():
        for ch in _NON_WORD_PUNCTUATION:
            folded = folded.replace(ch, " ")
        if not folded.isascii():
            return _WORDS.findall(folded)
    # (the table also lower-cases, which casefolded ASCII already is)
    return folded.encode("ascii").translate(ASCII_WORD_BYTES).decode("ascii").split()


def normalize(text: str) -> str:
    return " ".join(casefolded_words(text))


def exact_hash(normalized: str) -> int:
    return int.from_bytes(hashlib.sha256(normalized.encode("utf-8")).digest()[:8], "big")


def word_shingles(normalized: str, n: int) -> list[str]:
    words = normalized.split()
    if len(words) <= n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


_WORD_HASHES: dict[str, int] = {}


def _word_hashes(words: list[str]) -> dict[str, int]:
    """A dict holding the hash of every word of `words` (blake2b, 8 bytes, little-endian; a plain dict cache, the new
    words hashed once)."""
    cache = _WORD_HASHES
    if len(cache) > 1 << 18:
        cache.clear()
    for word in set(words).difference(cache):
        cache[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
    return cache


_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime, as a polynomial base


def shingle_hashes(normalized: str | list[str], n: int) -> np.ndarray:
    """32-bit hashes of the word shingles of `normalized` (one per shingle, as `word_shingles`); the text or its
    list of words.

    Words are hashed once each (blake2b, cached); a shingle's hash is a polynomial of its words' hashes
    mod 2^64, computed for all shingles at once with numpy, then its top 32 bits. Deterministic across
    runs and machines (no Python `hash()`), and an order of magnitude faster than SHA-1 per shingle.
    """
    words = normalized.split() if isinstance(normalized, str) else normalized
    if not words:
        return np.zeros(0, np.uint32)
    ids = np.fromiter(map(_word_hashes(words).__getitem__, words), dtype=np.uint64, count=len(words))
    count = max(1, len(ids) - n + 1)
    width = min(n, len(ids))
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            h = h * _MULTIPLIER + ids[j:j + count]
    return (h >> np.uint64(32)).astype(np.uint32)


@functools.lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positives + false negatives, as datasketch's MinHashLSH chooses them."""
    grid = np.linspace(0.0, 1.0, 2001)
    best, best_error = (1, num_perm), float("inf")
    below, above = grid <= threshold, grid >= threshold
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - grid ** r) ** b
            error = np.trapezoid(p[below], grid[below]) + np.trapezoid(1.0 - p[above], grid[above])
            if error < best_error - 1e-12:
                best, best_error = (b, r), error
    return best


@dataclass(frozen=True)
class Signature:
    exact: int            # 0 = no words: never a duplicate
    minhash: np.ndarray   # uint32[num_perm]
    bands: np.ndarray     # uint64[bands]


@dataclass(frozen=True)
class Permutations:
    """MinHash as datasketch 2 computes it by default (`MinHash(num_perm, seed)`, scheme `affine32`): each 32-bit
    input hash is mixed by MurmurHash3's finalizer, then mapped by `a * h + b mod 2^32` for every permutation
    (odd `a`), and the signature is the minimum per permutation. Written here with numpy over a whole shingle
    array because importing datasketch imports scipy (0.4 s in every spawned worker process) and its
    `update_batch` converts its input element by element; `test_dedup` checks permutations and signatures
    against datasketch's own `MinHash`."""
    a: np.ndarray  # uint32[num_perm], odd
    b: np.ndarray  # uint32[num_perm]

    @classmethod
    def draw(cls, num_perm: int, seed: int = MINHASH_SEED) -> "Permutations":
        gen = np.random.RandomState(seed)  # datasketch's draws, in its order
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return cls(a, b)

    def minhash(self, hashes: np.ndarray) -> np.ndarray:
        """uint32[num_perm]: the MinHash of a set of 32-bit hashes (all ones when there are none)."""
        if not len(hashes):
            return np.full(len(self.a), np.uint32(0xFFFFFFFF), np.uint32)
        h = hashes.astype(np.uint32, copy=True)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
        # In chunks: shingles x permutations x 4 bytes stays a few MiB however long the thread; one array per chunk.
        signature = None
        for i in range(0, len(h), _CHUNK):
            mapped = np.multiply.outer(h[i:i + _CHUNK], self.a)
            mapped += self.b
            low = mapped.min(axis=0)
            signature = low if signature is None else np.minimum(signature, low)
        return signature


class Signer:
    """Signatures of texts for one DedupConfig; the MinHash permutations are drawn once."""

    def __init__(self, config: DedupConfig = DedupConfig()):
        self.config = config
        self.bands, self.rows = lsh_params(config.near_duplicate_threshold, config.minhash_permutations)
        self.permutations = Permutations.draw(config.minhash_permutations)

    def sign_text(self, text: str) -> Signature:
        words = casefolded_words(text)  # `normalize`, kept as words for the shingles
        if not words:
            return Signature(0, np.zeros(self.config.minhash_permutations, np.uint32), np.zeros(self.bands, np.uint64))
        exact = exact_hash(" ".join(words)) or 1
        values = self.permutations.minhash(shingle_hashes(words, self.config.shingle_words))
        bands = np.fromiter(
            (int.from_bytes(hashlib.blake2b(values[i * self.rows:(i + 1) * self.rows].tobytes(),
                                            digest_size=8).digest(), "big")
             for i in range(self.bands)), dtype=np.uint64, count=self.bands)
        return Signature(exact, values, bands)

    def sign(self, thread: dict) -> Signature:
        return self.sign_text(thread_text(thread))


@dataclass(frozen=True)
class SignatureArrays:
    """Many signatures as three arrays (what a worker process sends back: a few numpy buffers, not objects)."""
    exact: np.ndarray     # uint64[n]
    minhash: np.ndarray   # uint32[n, num_perm]
    bands: np.ndarray     # uint64[n, bands]


def signatures_array(signatures: Sequence[Signature], signer: Signer) -> SignatureArrays:
    n, perms = len(signatures), signer.config.minhash_permutations
    if not n:
        return SignatureArrays(np.zeros(0, np.uint64), np.zeros((0, perms), np.uint32),
                               np.zeros((0, signer.bands), np.uint64))
    return SignatureArrays(np.array([s.exact for s in signatures], np.uint64),
                           np.stack([s.minhash for s in signatures]), np.stack([s.bands for s in signatures]))


class _Rows:
    """A growing 2-D array in fixed chunks (no per-row Python objects)."""

    def __init__(self, width: int, dtype):
        self.width, self.dtype = width, dtype
        self.chunks: list[np.ndarray] = []
        self.n = 0

    def append(self, row: np.ndarray) -> None:
        if self.n % _CHUNK == 0:
            self.chunks.append(np.zeros((_CHUNK, self.width), self.dtype))
        self.chunks[-1][self.n % _CHUNK] = row
        self.n += 1

    def array(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros((0, self.width), self.dtype)
        return np.concatenate(self.chunks)[: self.n]


class SignatureStore:
    """Signatures of many threads, added one at a time (streaming), resolved once.

    `spill_dir`: keep the MinHash rows in a file there instead of in memory (`close()` removes it).
    """

    def __init__(self, config: DedupConfig = DedupConfig(), spill_dir: Path | None = None):
        self.config = config
        self.signer = Signer(config)
        self.keys: list[tuple[str, str]] = []
        self._exact = _Rows(1, np.uint64)
        self._bands = _Rows(self.signer.bands, np.uint64)
        self._spill = None
        if spill_dir is not None:
            Path(spill_dir).mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix="minhash-", suffix=".u32", dir=spill_dir)
            self._spill_path = Path(name)
            self._spill = os.fdopen(handle, "wb")
            self._minhash = None
        else:
            self._minhash = _Rows(config.minhash_permutations, np.uint32)

    def add(self, dump: str, thread_id: str, thread: dict | None = None, text: str | None = None) -> None:
        signature = self.signer.sign_text(text if text is not None else thread_text(thread or {}))
        self.keys.append((str(dump), str(thread_id)))
        self._exact.append(np.array([signature.exact], np.uint64))
        self._bands.append(signature.bands)
        if self._spill is not None:
            self._spill.write(signature.minhash.tobytes())
        else:
            self._minhash.append(signature.minhash)

    def add_signed(self, keys: Sequence[tuple[str, str]], signed: SignatureArrays) -> None:
        """Threads signed elsewhere (`Signer.sign` + `signatures_array`, e.g. in a worker process), in order:
        the same as `add` for each of them."""
        for key, exact, minhash, bands in zip(keys, signed.exact, signed.minhash, signed.bands):
            self.keys.append((str(key[0]), str(key[1])))
            self._exact.append(np.array([exact], np.uint64))
            self._bands.append(bands)
            if self._spill is not None:
                self._spill.write(np.ascontiguousarray(minhash, np.uint32).tobytes())
            else:
                self._minhash.append(minhash)

    def __len__(self) -> int:
        return len(self.keys)

    def _minhash_rows(self) -> np.ndarray:
        if self._spill is None:
            return self._minhash.array()
        self._spill.flush()
        if not self.keys:
            return np.zeros((0, self.config.minhash_permutations), np.uint32)
        return np.memmap(self._spill_path, dtype=np.uint32, mode="r",
                         shape=(len(self.keys), self.config.minhash_permutations))

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill_path.unlink(missing_ok=True)
            self._spill = None

    def resolve(self, across_dumps_only: bool = False) -> list[Duplicate]:
        """Which threads to drop, and why; see the module docstring for the rule."""
        n = len(self.keys)
        if n < 2 or not (self.config.dedup_exact or self.config.dedup_near):
            return []
        order = sorted(range(n), key=self.keys.__getitem__)
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        exact = self._exact.array()[:, 0]
        has_words = exact != 0
        exact_groups = _groups(exact, has_words) if self.config.dedup_exact else {}
        near_groups: dict[int, list[np.ndarray]] = {}
        if self.config.dedup_near:
            bands = self._bands.array()
            for column in range(bands.shape[1]):
                for i, members in _groups(bands[:, column], has_words).items():
                    near_groups.setdefault(i, []).append(members)
        minhash = self._minhash_rows() if near_groups else None
        involved = sorted(set(exact_groups) | set(near_groups), key=lambda i: rank[i])
        dropped: set[int] = set()
        out: list[Duplicate] = []

        def earlier(i: int, groups: Iterable[np.ndarray]) -> list[int]:
            seen: set[int] = set()
            for members in groups:
                for j in members.tolist():
                    if rank[j] < rank[i] and j not in dropped and j not in seen and \
                            (not across_dumps_only or self.keys[j][0] != self.keys[i][0]):
                        seen.add(j)
            return sorted(seen, key=lambda j: rank[j])

        for i in involved:
            found = None
            if i in exact_groups:
                for j in earlier(i, [exact_groups[i]]):
                    found = (j, "exact_duplicate", 1.0)
                    break
            if found is None and i in near_groups:
                for j in earlier(i, near_groups[i]):
                    similarity = float(np.mean(minhash[i] == minhash[j]))
                    if similarity >= self.config.near_duplicate_threshold:
                        found = (j, "near_duplicate", round(similarity, 4))
                        break
            if found is not None:
                j, reason, similarity = found
                dropped.add(i)
                out.append(Duplicate(self.keys[i][0], self.keys[i][1], reason, self.keys[j][0], self.keys[j][1],
                                     similarity))
        return sorted(out, key=lambda d: d.key)


def _groups(values: np.ndarray, valid: np.ndarray) -> dict[int, np.ndarray]:
    """Index -> the indices sharing its value, for values shared by two or more valid rows."""
    index = np.flatnonzero(valid)
    if len(index) < 2:
        return {}
    _, inverse, counts = np.unique(values[index], return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1
    if not shared.any():
        return {}
    idx, groups = index[shared], inverse[shared]
    by_group = np.argsort(groups, kind="stable")
    idx, groups = idx[by_group], groups[by_group]
    out: dict[int, np.ndarray] = {}
    for members in np.split(idx, np.flatnonzero(np.diff(groups)) + 1):
        for i in members.tolist():
            out[i] = members
    return out


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def _thread_key(item: dict) -> tuple[str, str]:
    return str(item.get("dump")), str(item.get("thread_id"))


def find_duplicates(threads: Iterable[dict], config: DedupConfig = DedupConfig(),
                    across_dumps_only: bool = False) -> list[Duplicate]:
    """Duplicates among `threads` (cleaned threads or samples: dicts with dump, thread_id, turns).

    Several items with the same (dump, thread_id), such as the variants of one thread in
    augmented_prompts, are compared once, by the first of them.
    """
    if not (config.dedup_exact or config.dedup_near):
        return []
    store = SignatureStore(config)
    seen: set[tuple[str, str]] = set()
    for item in threads:
        key = _thread_key(item)
        if key in seen:
            continue
        seen.add(key)
        store.add(*key, thread=item)
    return store.resolve(across_dumps_only)


def cross_dump_duplicates(threads: Iterable[dict], config: DedupConfig = DedupConfig()) -> list[Duplicate]:
    """Threads (or samples) of several dumps that copy a thread of another dump, earliest (dump, thread_id) kept."""
    return find_duplicates(threads, config, across_dumps_only=True)


def drop_cross_dump_duplicates(samples: Sequence[dict], config: DedupConfig = DedupConfig()
                               ) -> tuple[list[dict], list[Duplicate]]:
    """For tokenized_parquet: the samples of every selected dump minus those of cross-dump copies.

    All variants of a dropped thread go (they share its thread_key); the order of the kept
    samples is the input order.
    """
    duplicates = cross_dump_duplicates(samples, config)
    drop = {d.key for d in duplicates}
    return [s for s in samples if _thread_key(s) not in drop], duplicates
