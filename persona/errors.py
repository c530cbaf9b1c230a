"""Typed errors that the CLI turns into one-line messages.

Every error persona raises on purpose is a ``PersonaError``: it carries what went
wrong and a hint saying how to fix it. The CLI prints ``error: <message>`` and
``hint: <hint>`` and exits with the class's exit code; anything else is a bug
and shows a traceback only under ``PERSONA_DEBUG=1``.
"""

from __future__ import annotations


class PersonaError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidInput(PersonaError):
    """A file, argument or value the user gave is malformed."""

    exit_code = 2


class UnsafeInput(InvalidInput):
    """Input refused because loading it could execute code (pickle, remote code)."""


class NotFound(PersonaError):
    """A named thing (store, ref, object, vector, base) does not exist."""

    exit_code = 3


class AmbiguousRevision(InvalidInput):
    """An id prefix matches more than one object."""


class Conflict(PersonaError):
    """A concurrent writer changed a ref first, or a name is already taken."""

    exit_code = 4


class Incompatible(InvalidInput):
    """Inputs that cannot be combined: another base, another shape, a missing tensor."""


class CorruptObject(PersonaError):
    """An object's bytes do not hash to its id, or it cannot be decoded."""

    exit_code = 5


class StoreError(PersonaError):
    """The store cannot be read or written (permissions, disk full, locked)."""

    exit_code = 6


class Interrupted(PersonaError):
    """The user stopped a long command; nothing partial was kept."""

    exit_code = 130
