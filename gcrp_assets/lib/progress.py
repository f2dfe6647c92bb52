"""Progress lines a person reads at a glance in a run log, such as
`step 5/16 (31 %) · loss 2.86 · lr 5.0e-4 · 229 tok/s · ETA 2 min` and `phase 3/6 · train · 12 s so far`.

Plain formatting and a small clock, shared by the trainer and the evaluation (no Dagster, no torch).
"""

from __future__ import annotations

import math
import time
from typing import Callable

SEPARATOR = " · "


def duration(seconds: float | None) -> str:
    """`45 s`, `2 min`, `1 h 20 min`: rounded to what a person plans with; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def scientific(value: float) -> str:
    """A learning rate as people write it: `5.0e-4`, not `5.0e-04` or `0.0005`."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fraction(done: int, total: int) -> str:
    """`5/16 (31 %)`; the percentage is floored so that 100 % means finished."""
    percent = math.floor(100 * done / total) if total > 0 else 0
    return f"{done}/{total} ({percent} %)"


def remaining_seconds(done: int, total: int, seconds: float) -> float | None:
    """Time left at the pace so far: `seconds` spent on `done` of `total` units; None before the first unit."""
    if done <= 0 or seconds <= 0:
        return None
    return seconds / done * max(total - done, 0)


def progress_line(unit: str, done: int, total: int, fields: list[str], eta: float | None) -> str:
    """`<unit> done/total (p %) · field · field · ETA …` (no ETA once finished)."""
    parts = [f"{unit} {fraction(done, total)}", *fields]
    if done < total:
        parts.append(f"ETA {duration(eta)}")
    return SEPARATOR.join(parts)


class Phases:
    """The phases of a job, logged as they start: `phase 2/6 · load the base model · 12 s so far`."""

    def __init__(self, names: list[str], log: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.names, self.log, self.clock = list(names), log, clock
        self.started = clock()

    def start(self, name: str, detail: str = "") -> None:
        index = self.names.index(name) + 1
        parts = [f"phase {index}/{len(self.names)}", name + (f" ({detail})" if detail else ""),
                 f"{duration(self.clock() - self.started)} so far"]
        self.log(SEPARATOR.join(parts))
