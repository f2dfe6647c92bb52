"""Tokenization throughput: raw tokenizer vs this project's pipeline vs per-turn prefixes.

Run from the repository root (either form):

    .venv/bin/python -m benchmarks.tokenize_speed --threads 20000
    .venv/bin/python benchmarks/tokenize_speed.py --threads 2000      # quick

A deterministic synthetic corpus of forum group-roleplay threads (`benchmarks.corpus.synthetic_samples`)
is generated in batches (never held whole in memory): 2–7 characters, non-alternating turns, a roster
system prompt, and a share of long threads (40–80 turns). For each batch, in one run:

- raw: `tokenizer(texts)` on the already rendered texts, batched — the limit;
- pipeline: `tokenize_samples` (render + tokenize + labels + windows), same samples;
- the pipeline again with windows tokenized alone (`reuse_tokens=False`: the previous behaviour)
  and with windows off (`max_length` unbounded), to show what windows cost;
- per-turn (on a subset of 40+-turn threads): for each model turn, render the conversation prefix
  up to it, tokenize it (one call per prefix, as a per-example `map` does; or one batched call per
  thread), label its last model turn and keep its last `max_length` tokens — against
  `tokenize_sample` on the same thread with the same `max_length` (every model turn trained once,
  each window within `max_length`). Both are timed in CPU seconds of this process (all tokenizer
  threads counted, so a batched call gets no free parallelism), best of `--repeats` runs each,
  interleaved, garbage collection off: a per-thread ratio, reported for every thread;
- peak RSS (`resource.getrusage`) after a quarter of the corpus and after all of it.

Tokens/s for raw and pipeline both count the tokens of the whole rendered threads, so the ratio is
the pipeline's throughput relative to bare tokenization of the same text.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from benchmarks.corpus import batched, synthetic_samples  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def per_turn(sample: dict, fmt, tokenizer, labels_for, render, batched: bool, max_length: int) -> int:
    """The quadratic approach: for every model turn, render the prefix up to it and tokenize it again
    (one tokenizer call per prefix, as a per-example `map` would; or one batched call per thread),
    label its last model turn, and keep the last `max_length` tokens (the turn trained, with as much
    context as fits). Returns the tokens tokenized."""
    rendered = [render(sample, fmt, tokenizer.bos_token, (0, k + 1), label_policy="last_model_turn")
                for k, turn in enumerate(sample["turns"]) if turn["role"] == "model"]
    if batched:
        enc = tokenizer([r.text for r in rendered], add_special_tokens=False, return_offsets_mapping=True)
        pairs = zip(enc["input_ids"], enc["offset_mapping"])
    else:
        pairs = ((e["input_ids"], e["offset_mapping"]) for e in
                 (tokenizer(r.text, add_special_tokens=False, return_offsets_mapping=True) for r in rendered))
    tokens = 0
    for r, (ids, offsets) in zip(rendered, pairs):
        labels = labels_for(r, ids, offsets)
        ids, labels = ids[-max_length:], labels[-max_length:]
        tokens += len(offsets)
    return tokens


def cpu_best(fn, repeats: int) -> float:
    """Best CPU time (seconds, this process, all threads) of `repeats` calls, garbage collection off."""
    best = float("inf")
    for _ in range(repeats):
        gc.disable()
        try:
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
        finally:
            gc.enable()
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=20000, help="corpus size (default 20000)")
    parser.add_argument("--format", default="inst", help="prompt format name or spec path (default inst)")
    parser.add_argument("--max-length", type=int, default=4096, help="window size in tokens (default 4096)")
    parser.add_argument("--batch", type=int, default=256, help="threads per batch (default 256)")
    parser.add_argument("--per-turn-threads", type=int, default=100,
                        help="40+-turn threads timed against the per-turn approach (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="per-thread timings: best of this many (default 3)")
    parser.add_argument("--skip-unwindowed", action="store_true",
                        help="skip the extra passes (windows tokenized alone; windows off)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from gcrp_assets.lib.training.base_model import packaged_gguf
    from gcrp_assets.lib.formats.chat_format import get_format, render
    from gcrp_assets.lib.formats.tokenization import labels_for, tokenize_sample, tokenize_samples

    gguf = packaged_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fmt = get_format(args.format)
    print(f"tokenizer: {gguf.name} ({type(tokenizer).__name__}), format {fmt.name}, max_length {args.max_length}, "
          f"batch {args.batch}, cpus {os.cpu_count()}", flush=True)

    raw_s = ours_s = unwindowed_s = alone_s = 0.0
    corpus_tokens = window_tokens = trained = n_threads = n_long = n_windows = n_dropped = 0
    rss_at: list[tuple[int, float]] = []
    quarter = max(1, args.threads // 4)
    long_subset: list[dict] = []
    started = time.perf_counter()
    for batch in batched(synthetic_samples(args.threads, args.seed), args.batch):
        texts = [render(s, fmt, tokenizer.bos_token, eos_token=tokenizer.eos_token).text for s in batch]
        t0 = time.perf_counter()
        raw = tokenizer(texts, add_special_tokens=False)
        raw_s += time.perf_counter() - t0
        corpus_tokens += sum(len(ids) for ids in raw["input_ids"])
        del raw, texts

        t0 = time.perf_counter()
        results = list(tokenize_samples(batch, fmt, tokenizer, args.max_length, batch_size=args.batch))
        ours_s += time.perf_counter() - t0
        if not args.skip_unwindowed:
            t0 = time.perf_counter()
            for _ in tokenize_samples(batch, fmt, tokenizer, args.max_length, batch_size=args.batch,
                                      reuse_tokens=False):
                pass
            alone_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in tokenize_samples(batch, fmt, tokenizer, 1 << 40, batch_size=args.batch):
                pass
            unwindowed_s += time.perf_counter() - t0
        for windows, dropped in results:
            n_windows += len(windows)
            n_dropped += len(dropped)
            window_tokens += sum(len(w.input_ids) for w in windows)
            trained += sum(w.n_trained for w in windows)
        del results

        for s in batch:
            if len(s["turns"]) >= 40:
                n_long += 1
                if len(long_subset) < args.per_turn_threads:
                    long_subset.append(s)
        before = n_threads
        n_threads += len(batch)
        if before < quarter <= n_threads:
            rss_at.append((n_threads, peak_rss_mib()))
    if not rss_at or rss_at[-1][0] != n_threads:
        rss_at.append((n_threads, peak_rss_mib()))
    main_s = time.perf_counter() - started

    # Per-turn prefixes vs the pipeline, thread by thread, on CPU time (best of `repeats`).
    ratios, batched_ratios, windowed, turns_of = [], [], [], []
    ours_long = per_turn_s = per_turn_batched_s = per_turn_tokens = 0.0
    for s in long_subset:
        result = []
        a = cpu_best(lambda: result.append(tokenize_sample(s, fmt, tokenizer, args.max_length)), args.repeats)
        windows = result[0][0]
        windowed.append(len(windows) > 1 or windows[0].last_turn - windows[0].first_turn < len(s["turns"]))
        turns_of.append(len(s["turns"]))
        per_turn_tokens += per_turn(s, fmt, tokenizer, labels_for, render, False, args.max_length)
        b = cpu_best(lambda: per_turn(s, fmt, tokenizer, labels_for, render, False, args.max_length), args.repeats)
        c = cpu_best(lambda: per_turn(s, fmt, tokenizer, labels_for, render, True, args.max_length), args.repeats)
        ours_long += a
        per_turn_s += b
        per_turn_batched_s += c
        ratios.append(b / a)
        batched_ratios.append(c / a)

    def row(name: str, tokens: float, seconds: float, ratio: str) -> str:
        return f"| {name:<58} | {tokens / 1e6:>9.2f}M | {seconds:>8.1f} | {tokens / seconds / 1e3:>9.0f}k | {ratio:>8} |"

    print()
    print(f"corpus: {n_threads} threads ({n_long} with 40+ turns), {corpus_tokens / 1e6:.2f}M tokens rendered; "
          f"pipeline: {n_windows} windows, {window_tokens / 1e6:.2f}M tokens, {trained / 1e6:.2f}M trained, "
          f"{n_dropped} turns dropped; main loop {main_s:.0f} s")
    print()
    print(f"| {'pipeline':<58} | {'tokens':>10} | {'seconds':>8} | {'tokens/s':>10} | {'vs raw':>8} |")
    print(f"|{'-' * 60}|{'-' * 12}|{'-' * 10}|{'-' * 12}|{'-' * 10}|")
    print(row("raw tokenizer(texts), batched (the limit)", corpus_tokens, raw_s, "1.00x"))
    print(row("tokenize_samples: render + tokenize + labels + windows", corpus_tokens, ours_s,
              f"{raw_s / ours_s:.2f}x"))
    if alone_s:
        print(row("tokenize_samples, each window tokenized alone (before)", corpus_tokens, alone_s,
                  f"{raw_s / alone_s:.2f}x"))
    if unwindowed_s:
        print(row("tokenize_samples, windows off (no sample re-tokenized)", corpus_tokens, unwindowed_s,
                  f"{raw_s / unwindowed_s:.2f}x"))
    if long_subset:
        long_tokens = sum(len(tokenizer(render(s, fmt, tokenizer.bos_token).text, add_special_tokens=False)
                              ["input_ids"]) for s in long_subset)
        print(row(f"tokenize_sample, {len(long_subset)} threads of 40+ turns (CPU s)", long_tokens, ours_long, ""))
        print(row(f"per-turn prefixes, one call each ({per_turn_tokens / 1e6:.1f}M tok)", long_tokens, per_turn_s,
                  f"{ours_long / per_turn_s:.2f}x"))
        print(row("per-turn prefixes, one batched call per thread", long_tokens, per_turn_batched_s,
                  f"{ours_long / per_turn_batched_s:.2f}x"))
        print()

        def spread(values: list[float]) -> str:
            q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
            return (f"min {min(values):.1f}x, p10 {q[0]:.1f}x, median {statistics.median(values):.1f}x, "
                    f"p90 {q[-1]:.1f}x, max {max(values):.1f}x")

        print(f"per-thread speed-up of tokenize_sample over per-turn prefixes ({len(ratios)} threads of "
              f"{min(turns_of)}-{max(turns_of)} turns, CPU time, best of {args.repeats}; the two per-turn rows "
              f"above are relative to the tokenize_sample row):")
        print(f"  one call per prefix, all threads:           {spread(ratios)}")
        print(f"  one batched call per thread, all threads:   {spread(batched_ratios)}")
        single = [r for r, w in zip(ratios, windowed) if not w]
        split = [r for r, w in zip(ratios, windowed) if w]
        if single:
            print(f"  one call per prefix, {len(single):>3} threads in one window: {spread(single)}")
        if split:
            print(f"  one call per prefix, {len(split):>3} windowed threads:       {spread(split)}")
        forty = [r for r, n in zip(ratios, turns_of) if n < 50]
        if forty:
            print(f"  one call per prefix, {len(forty):>3} threads of 40-49 turns: {spread(forty)}")
        worst = min(range(len(ratios)), key=ratios.__getitem__)
        print(f"  slowest thread: {turns_of[worst]} turns, {ratios[worst]:.1f}x "
              f"({'windowed' if windowed[worst] else 'one window'})")
    print("peak RSS: " + ", ".join(f"{mib:.0f} MiB after {n} threads" for n, mib in rss_at))
    print()
    print(f"goal >= 0.70x raw tokenizer: {raw_s / ours_s:.2f}x {'PASS' if raw_s / ours_s >= 0.7 else 'FAIL'}")
    if ratios:
        print(f"goal >= 10x per-turn prefixes on every 40+-turn thread: min {min(ratios):.1f}x "
              f"{'PASS' if min(ratios) >= 10 else 'FAIL'}")


if __name__ == "__main__":
    main()
