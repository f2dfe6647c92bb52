"""Small Matplotlib plots, returned as PNG bytes (headless)."""

from __future__ import annotations

import base64
import io


def loss_curve_png(history: list[dict]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss (model turns)", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no version/date stamp in the file
    plt.close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def paired_scatter_png(base: list[float], adapter: list[float]) -> bytes:
    """Per-thread loss, base (x) against adapter (y), with the y = x line: points below it improved."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(base, adapter, s=18)
    if base and adapter:
        lo, hi = min(base + adapter), max(base + adapter)
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
    ax.set_xlabel("base loss per thread")
    ax.set_ylabel("adapter loss per thread")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def length_histogram_png(lengths: list[int], max_length: int) -> bytes:
    """Tokens per row, with the maximum length marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(lengths, bins=30)
    ax.axvline(max_length, color="red", linewidth=1, label=f"max_length {max_length}")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def thread_delta_png(keys: list[str], deltas: list[float], mean: float, low: float, high: float) -> bytes:
    """Per-thread loss difference (adapter − base), sorted, with the mean and its 95 % bootstrap CI as a band:
    bars left of 0 are threads the adapter improved."""
    plt = _pyplot()
    order = sorted(range(len(deltas)), key=lambda i: deltas[i])
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.28 * len(deltas) + 1)), dpi=80)
    ax.barh(range(len(order)), [deltas[i] for i in order],
            color=["tab:green" if deltas[i] < 0 else "tab:red" for i in order])
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([keys[i][-28:] for i in order], fontsize=7)
    ax.axvline(0, color="grey", linewidth=1)
    if mean == mean:
        ax.axvline(mean, color="black", linewidth=1, label=f"mean {mean:.3g}")
    if low == low and high == high:
        ax.axvspan(low, high, color="grey", alpha=0.25, label=f"95% CI [{low:.3g}, {high:.3g}]")
    ax.set_xlabel("adapter − base loss per thread (nats/token)")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def role_loss_png(roles: dict[str, dict]) -> bytes:
    """Teacher-forced loss per token role, base vs adapter (grouped bars)."""
    plt = _pyplot()
    names = list(roles)
    fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [roles[n]["loss_base"] for n in names], width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], [roles[n]["loss_adapter"] for n in names], width=0.4, label="adapter")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _png(fig)


def length_distribution_png(lengths: dict[str, list[int]]) -> bytes:
    """Reply lengths in words: one step histogram per series (human replies, each arm and decoding) on shared
    bins, with each series' median marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    values = [v for series in lengths.values() for v in series]
    top = max(values) if values else 1
    bins = list(range(0, top + max(1, top // 20) + 1, max(1, top // 20)))
    for k, (name, series) in enumerate(lengths.items()):
        if not series:
            continue
        color = f"C{k}"
        ax.hist(series, bins=bins, histtype="step", linewidth=1.5, color=color, label=f"{name} (n={len(series)})",
                density=True)
        median = sorted(series)[len(series) // 2]
        ax.axvline(median, color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("words per reply (stops on)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return _png(fig)


def failure_mode_png(labels: list[str], base: list[float], adapter: list[float], lows: list[float],
                     highs: list[float]) -> bytes:
    """Teacher-forced failure modes per held-out model turn: base and adapter means side by side (bars), with the
    adapter bar's whisker spanning base + the 95 % CI of the difference (the difference's interval, drawn where
    the adapter's value sits)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(labels) + 1.2), dpi=70)
    ys = range(len(labels))
    ax.barh([y + 0.2 for y in ys], base, height=0.4, label="base", color="tab:grey")
    err_low = [a - (b + lo) if lo == lo else 0 for a, b, lo in zip(adapter, base, lows)]
    err_high = [(b + hi) - a if hi == hi else 0 for a, b, hi in zip(adapter, base, highs)]
    ax.barh([y - 0.2 for y in ys], adapter, height=0.4, label="adapter (whisker: base + 95% CI of Δ)",
            color="tab:blue", xerr=[[max(e, 0) for e in err_low], [max(e, 0) for e in err_high]], capsize=3)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of held-out model turns / mean probability")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    return _png(fig)
