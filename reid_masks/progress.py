"""One-line progress reports (done/total, items/s, ETA) on stderr, shared by every long command."""
from __future__ import annotations

import sys
import time


class Progress:
    """``update(n)`` after each batch; prints at most every ``every`` seconds and at the end.

    The rate counts from the end of the first batch (which carries the workers' start-up and
    the first model call), so it is not inflated by a near-zero interval nor dragged down by
    start-up; until a second batch has finished, no rate or ETA is shown.
    """

    def __init__(self, total: int, label: str = "generate", unit: str = "images", every: float = 2.0, stream=None):
        self.total, self.label, self.unit, self.every = total, label, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = self.last = time.monotonic()
        self.base: int | None = None

    def rate(self, now: float | None = None) -> float | None:
        """Items per second since the first batch finished; None until that is measurable."""
        now = time.monotonic() if now is None else now
        if self.base is None or self.done <= self.base or now - self.start < 1e-3:
            return None
        return (self.done - self.base) / (now - self.start)

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.base is None:
            self.base, self.start = self.done, now
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.stream.write("\r" + self.line(now) + "   ")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        rate = self.rate(now)
        text = f"{self.label}: {self.done}/{self.total} {self.unit}"
        if rate is not None:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f"  {rate:.1f} {short_unit(self.unit)}/s"
            if self.done < self.total:
                text += f"  ETA {format_seconds(eta)}"
        return text


def short_unit(unit: str) -> str:
    return {"images": "img"}.get(unit, unit)


def format_seconds(s: float) -> str:
    if s == float("inf") or s != s:
        return "?"
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def plural(n: int, word: str) -> str:
    """'1 epoch', '3 epochs': a count with its noun (regular plurals only)."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
