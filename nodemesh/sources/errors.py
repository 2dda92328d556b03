"""Error hierarchy of the sources package."""

from __future__ import annotations


class SourceError(Exception):
    """Base of every error a source raises."""


class SourceDirectoryError(SourceError):
    """The directory a file source watches is missing or unreadable."""
