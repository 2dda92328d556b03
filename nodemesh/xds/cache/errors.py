"""Errors of the snapshot cache."""

from __future__ import annotations


class CacheError(Exception):
    """Base of every error the snapshot cache raises."""


class SnapshotError(CacheError):
    """A snapshot could not be built from the resources it was given.

    The message names the type URL and the resource so the caller (the
    translator's wiring) can report which object produced it.
    """
