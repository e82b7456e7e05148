"""Progress of the teacher builds, as trials already show theirs (trainables/callbacks.py): teachers
built of the total, epochs trained of the epochs to train, elapsed time, an ETA, and the epoch each
running build has reached.

Build tasks report each epoch they finish to a small actor (no CPU of its own); the driver reads it
while it waits for the tasks (`ray.wait` with a timeout) and prints one plain line every `every_s`
seconds, so a log file and a terminal read alike. The ETA is the elapsed time per epoch trained so
far times the epochs left: teachers of different sizes make it rough, and it says so ("~")."""

from __future__ import annotations

import time
from typing import Callable

import ray


@ray.remote(num_cpus=0)
class _Epochs:
    """The last epoch each build reported: {teacher key: epoch}."""

    def __init__(self):
        self.reached: dict[str, int] = {}

    def put(self, key: str, epoch: int) -> None:
        self.reached[key] = int(epoch)

    def get(self) -> dict[str, int]:
        return dict(self.reached)


def duration(seconds: float) -> str:
    """H:MM:SS, as the trials' progress (trainables/callbacks.py) and the builds' show elapsed time and ETAs."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def build_line(epochs: dict[str, int], labels: dict[str, str], reached: dict[str, int], done: set[str],
               elapsed: float) -> str:
    """The progress line: builds finished (built or failed) of the total, epochs trained of the epochs to
    train (a finished build counts all of its own), elapsed, the ETA, and each running build's epoch."""
    trained = sum(epochs[k] if k in done else min(reached.get(k, 0), epochs[k]) for k in epochs)
    total = sum(epochs.values())
    eta = duration(elapsed / trained * (total - trained)) if trained else "-"
    running = [f"{labels[k]} epoch {reached[k]}/{epochs[k]}" for k in epochs if k not in done and k in reached]
    return (f"[teachers] {len(done & set(epochs))}/{len(epochs)} finished, {trained}/{total} epochs, elapsed "
            f"{duration(elapsed)}, ETA ~{eta}" + (f" | {', '.join(running)}" if running else ""))


class BuildProgress:
    """`epochs`: each teacher to build (by key) and the epochs its build trains; `labels`: their names."""

    def __init__(self, epochs: dict[str, int], labels: dict[str, str], out: Callable[[str], None],
                 every_s: float = 10.0):
        self.epochs, self.labels, self.out, self.every_s = epochs, labels, out, every_s
        self.reporter = _Epochs.remote()  # handed to each build task
        self._start = time.monotonic()
        self._last = self._start

    def poll(self, done: set[str], force: bool = False) -> None:
        """Print the line when `every_s` has passed since the last one (or `force`)."""
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            reached = ray.get(self.reporter.get.remote())
            self.out(build_line(self.epochs, self.labels, reached, done, time.monotonic() - self._start))

    def close(self) -> None:
        ray.kill(self.reporter)
