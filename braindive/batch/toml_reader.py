"""Reading a checked TOML file (a sweep): typed values, ``presets.LIMITS`` checks, and errors that name
``file:line`` (``tomllib`` reports no line numbers for values, so the key is looked up in the text)."""
from __future__ import annotations

import math
import re
from pathlib import Path

from ..presets import LIMITS, LimitError

__all__ = ["SweepError", "TomlReader"]


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file and line."""


class TomlReader:
    """The lines of ``text`` (read from ``source``; relative paths resolve against ``base_dir``) and the checks
    section readers use; every failure raises ``SweepError`` naming ``source:line``."""

    def __init__(self, text: str, source: str, base_dir: Path):
        self.lines, self.source, self.base_dir = text.splitlines(), source, base_dir

    # -------------------------------------------------------------- errors with line numbers

    def line(self, table: str, key: str | None = None, index: int = 0, needle: str | None = None) -> int:
        """1-based line of ``key =`` in the ``index``-th ``[table]`` / ``[[table]]`` ("" = top level); with
        ``needle``, the first line from there on that contains it. Falls back to the table's header, else 1."""
        current, seen, start, found_key = "", {}, None, key is None
        for n, raw in enumerate(self.lines, 1):
            header = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", raw)
            if header:
                current = header.group(1)
                seen[current] = seen.get(current, -1) + 1
                start = n if current == table and seen[current] == index else start
                continue
            if current != table or seen.get(table, 0) != index:
                continue
            body = raw.split("#", 1)[0]
            if not found_key and re.match(rf"\s*{re.escape(key)}\s*=", body):
                if needle is None:
                    return n
                found_key = True
            if found_key and needle is not None and needle in body:
                return n
        return start or 1

    def fail(self, message: str, table: str = "", key: str | None = None, index: int = 0, needle: str | None = None):
        raise SweepError(f"{self.source}:{self.line(table, key, index, needle)}: {message}")

    # -------------------------------------------------------------- values

    def check_keys(self, data: dict, allowed: set, table: str, index: int = 0) -> None:
        for key in data:
            if key not in allowed:
                where = f"[{table}]" if table else "the top level"
                self.fail(f"unknown key {key!r} in {where}; allowed: {sorted(allowed)}.", table, key, index)

    def number(self, value, kind, low, high, table: str, key: str, index: int = 0, name: str | None = None):
        ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or not (math.isfinite(value) and low <= value <= high):
            what = "an integer" if kind is int else "a number"
            self.fail(f"`{name or table + '.' + key}` must be {what} in [{low:g}, {high:g}], got {value!r}.", table, key,
                      index)
        return kind(value)

    def limit(self, field: str, value, table: str, key: str):
        """``presets.LIMITS[field]`` check, its message (the field's UI label and range) prefixed by file:line."""
        if field != "prompt" and isinstance(value, str):  # TOML text is not a number, whatever it spells
            value = [value]
        try:
            return LIMITS[field].check(value)
        except LimitError as exc:
            self.fail(str(exc), table, key)

    def string(self, value, table: str, key: str, index: int = 0) -> str:
        if not isinstance(value, str) or not value:
            self.fail(f"`{table + '.' if table else ''}{key}` must be a non-empty string, got {value!r}.", table, key, index)
        return value

    def string_list(self, value, table: str, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(f"`{table}.{key}` must be a list of names, got {value!r}.", table, key)
        return value
