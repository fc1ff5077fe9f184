"""Where each field of a generated spec comes from: the rules and request fields that decided it.

The generator takes an optional :class:`Provenance` and notes, as it builds each field, the
rule ids (``S1``–``S32``, ``controller/RULES.md``) and the request fields behind it. Without one
it notes nothing and its output is the same. Paths name spec fields as ``winspec explain``
prints them: members joined by ``.``, list items as ``[i]`` (``mounts[0].source``).
"""

from __future__ import annotations


class Provenance:
    """Per spec field path, the rule ids and request fields that decided it."""

    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: dict[str, tuple[list[str], list[str]]] = {}

    def note(self, path: str, rules: str, *sources: str) -> None:
        """Record that ``rules`` (ids separated by spaces) decided ``path`` from ``sources``."""
        known_rules, known_sources = self.fields.setdefault(path, ([], []))
        for rule in rules.split():
            if rule not in known_rules:
                known_rules.append(rule)
                known_rules.sort(key=lambda r: int(r[1:]))
        for source in sources:
            if source not in known_sources:
                known_sources.append(source)

    def lookup(self, path: str) -> tuple[list[str], list[str]]:
        """The rules and request fields of ``path``: those of its longest noted ancestor-or-self."""
        while True:
            entry = self.fields.get(path)
            if entry is not None:
                return entry
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return [], []
            path = path[:cut]
