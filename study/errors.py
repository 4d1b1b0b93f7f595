"""The two ways a study can fail: the whole study (stop), or one sample (skip it, retry on a rerun)."""

from __future__ import annotations


class StudyError(Exception):
    """A study cannot go on (server unreachable, settings clash); the message says why."""


class SampleError(Exception):
    """One sample could not be drawn; it is not recorded, so a rerun retries it."""
