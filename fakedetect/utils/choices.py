"""Closed sets of config values as enums whose members are their strings."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """One of a closed set of config values. A member is its string: it compares equal to it, hashes, prints and
    serializes (JSON, cache keys, pack metadata) as it, so configs and files keep plain strings while the code
    names every value once."""

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def values(cls) -> list[str]:
        return [str(member) for member in cls]
