"""One-line progress reports with rate and ETA for long stages."""

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Prints `label: done/total unit, rate, ETA` at most every `every_s` seconds, and at the end."""

    def __init__(self, label: str, total: int, unit: str, every_s: float = 2.0, stream=sys.stderr):
        self.label, self.total, self.unit, self.every_s, self.stream = label, total, unit, every_s, stream
        self.done = 0
        self.start = self.last = time.monotonic()
        self.extra = ""

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        self.extra = extra or self.extra
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            self._print(now)

    def elapsed(self) -> float:
        return max(time.monotonic() - self.start, 1e-9)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = f"{self.label}: {self.done:,}/{self.total:,} {self.unit}, {rate:,.1f} {self.unit}/s, ETA {_clock(eta)}"
        print(f"{line}  {self.extra}".rstrip(), file=self.stream, flush=True)
