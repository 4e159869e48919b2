"""The error for a build option that does not fit the spec, shared by `build` and the writers it calls."""

from __future__ import annotations


class UsageError(ValueError):
    """A build option that does not fit the spec (e.g. a length for a time axis it does not have): exit 2."""
