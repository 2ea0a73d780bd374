"""The exception types shared by every part of fastcert."""

from __future__ import annotations


class UnsupportedError(ValueError, NotImplementedError):
    """A layer or method combination that fastcert does not (yet) bound; never silently replaced.

    The one exception type for "not supported", whether found at conversion (an unsupported layer) or
    by a method (the Kolter-Wong dual on a sigmoid): a ``ValueError`` like every other refusal of an
    input (and a ``NotImplementedError``, as it was first defined)."""
