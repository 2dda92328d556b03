"""Exponential backoff with jitter for reconnecting to the API server."""

from __future__ import annotations

import random

from nodemesh.k8s_watch.settings import WatchSettings


class Backoff:
    """Delays double from `backoff_initial` up to `backoff_max`; each is scaled
    by a random factor in [1 - jitter, 1] so many agents do not retry in step."""

    def __init__(self, settings: WatchSettings, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        s = self._settings
        base = min(s.backoff_max, s.backoff_initial * (2.0 ** min(self._attempt, 30)))
        self._attempt += 1
        return base * (1.0 - s.backoff_jitter * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
