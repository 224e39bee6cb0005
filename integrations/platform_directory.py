"""The platform directory: where each app keeps its bound phone number, and how hard it is to change.

Read-only reference data loaded from platform_directory.json; it never holds a URL or a phone number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

Difficulty = Literal["easy", "medium", "hard", "impossible"]

CATEGORIES: tuple[str, ...] = (
    "social",
    "news",
    "video",
    "payment",
    "bank",
    "shopping",
    "local_services",
    "travel",
    "railway",
    "cloud_drive",
    "mail",
    "education",
    "device_id",
    "securities",
)
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard", "impossible")
DEFAULT_PATH = Path(__file__).with_name("platform_directory.json")

_REQUIRED_TEXT = ("id", "name_zh", "name_en", "category", "difficulty")
_OPTIONAL_TEXT = ("change_path_zh", "change_path_en", "notes_zh", "notes_en", "appeal_zh", "appeal_en")
# Days we give a platform's own appeal before the next rung of the escalation ladder opens, where the platform
# states none. An assumption, not a rule: README says so.
DEFAULT_APPEAL_DAYS = 7


class DirectoryError(ValueError):
    """The directory file is malformed; the message names the entry and field to fix."""


@dataclass(frozen=True)
class Platform:
    id: str
    name_zh: str
    name_en: str
    category: str
    registry_unbind: bool
    change_path_zh: str
    change_path_en: str
    difficulty: Difficulty
    notes_zh: str = ""
    notes_en: str = ""
    # Where the platform's own appeal (人工申诉) is: the first rung of the escalation ladder. Empty when unknown.
    appeal_zh: str = ""
    appeal_en: str = ""
    appeal_days: int = DEFAULT_APPEAL_DAYS

    def name(self, locale: str) -> str:
        return self.name_en if locale.startswith("en") else self.name_zh

    def change_path(self, locale: str) -> str:
        """Empty when we don't know the path for sure: better nothing than a wrong menu."""
        return self.change_path_en if locale.startswith("en") else self.change_path_zh

    def notes(self, locale: str) -> str:
        return self.notes_en if locale.startswith("en") else self.notes_zh


class PlatformDirectory:
    """An immutable, ordered collection of platforms with lookups by id and by category."""

    def __init__(self, platforms: tuple[Platform, ...]) -> None:
        self._platforms = platforms
        self._by_id: Mapping[str, Platform] = MappingProxyType({p.id: p for p in platforms})
        grouped: dict[str, tuple[Platform, ...]] = {
            category: tuple(p for p in platforms if p.category == category) for category in CATEGORIES
        }
        self._by_category: Mapping[str, tuple[Platform, ...]] = MappingProxyType(
            {category: group for category, group in grouped.items() if group}
        )

    def get(self, platform_id: str) -> Platform | None:
        return self._by_id.get(platform_id)

    def all(self) -> tuple[Platform, ...]:
        return self._platforms

    def by_category(self) -> Mapping[str, tuple[Platform, ...]]:
        """Categories in display order, each with its platforms in file order; empty ones left out."""
        return self._by_category

    def registry_unbind_ids(self) -> frozenset[str]:
        """Platforms the registry's one-click unbinding (一键解绑) covers."""
        return frozenset(p.id for p in self._platforms if p.registry_unbind)

    def __len__(self) -> int:
        return len(self._platforms)

    def __contains__(self, platform_id: object) -> bool:
        return platform_id in self._by_id


def _parse_platform(index: int, raw: object) -> Platform:
    if not isinstance(raw, dict):
        raise DirectoryError(f"platforms[{index}] is not an object")
    entry = cast(dict[str, Any], raw)
    where = f"platforms[{index}] ({entry.get('id', '?')})"
    known = set(_REQUIRED_TEXT) | set(_OPTIONAL_TEXT) | {"registry_unbind", "appeal_days"}
    unknown = set(entry) - known
    if unknown:
        raise DirectoryError(f"{where}: unknown fields {sorted(unknown)}")
    for field in _REQUIRED_TEXT:
        value = entry.get(field)
        if not isinstance(value, str) or not value.strip():
            raise DirectoryError(f"{where}: {field} must be a non-empty string")
    for field in _OPTIONAL_TEXT:
        if not isinstance(entry.get(field, ""), str):
            raise DirectoryError(f"{where}: {field} must be a string")
    platform_id: str = entry["id"]
    if not platform_id.isascii() or not platform_id.replace("_", "").isalnum() or platform_id != platform_id.lower():
        raise DirectoryError(f"{where}: id must be lower-case ASCII letters, digits and underscores")
    if entry["category"] not in CATEGORIES:
        raise DirectoryError(f"{where}: unknown category {entry['category']!r}")
    if entry["difficulty"] not in DIFFICULTIES:
        raise DirectoryError(f"{where}: difficulty must be one of {', '.join(DIFFICULTIES)}")
    appeal_days = entry.get("appeal_days", DEFAULT_APPEAL_DAYS)
    if not isinstance(appeal_days, int) or isinstance(appeal_days, bool) or not 1 <= appeal_days <= 60:
        raise DirectoryError(f"{where}: appeal_days must be a whole number of days from 1 to 60")
    if not isinstance(entry.get("registry_unbind"), bool):
        raise DirectoryError(f"{where}: registry_unbind must be true or false")
    return Platform(
        id=platform_id,
        name_zh=entry["name_zh"],
        name_en=entry["name_en"],
        category=entry["category"],
        registry_unbind=entry["registry_unbind"],
        change_path_zh=entry.get("change_path_zh", ""),
        change_path_en=entry.get("change_path_en", ""),
        difficulty=cast(Difficulty, entry["difficulty"]),
        notes_zh=entry.get("notes_zh", ""),
        notes_en=entry.get("notes_en", ""),
        appeal_zh=entry.get("appeal_zh", ""),
        appeal_en=entry.get("appeal_en", ""),
        appeal_days=appeal_days,
    )


def parse_directory(document: object) -> PlatformDirectory:
    """Validates a decoded directory document; raises DirectoryError naming the first problem."""
    if not isinstance(document, dict) or not isinstance(document.get("platforms"), list):
        raise DirectoryError("the directory must be an object with a 'platforms' list")
    platforms = tuple(_parse_platform(i, raw) for i, raw in enumerate(document["platforms"]))
    seen: set[str] = set()
    for platform in platforms:
        if platform.id in seen:
            raise DirectoryError(f"duplicate platform id {platform.id!r}")
        seen.add(platform.id)
    return PlatformDirectory(platforms)


@lru_cache(maxsize=1)
def _load_default() -> PlatformDirectory:
    return _load_file(DEFAULT_PATH)


def _load_file(path: Path) -> PlatformDirectory:
    with path.open(encoding="utf-8") as handle:
        return parse_directory(json.load(handle))


def load_directory(path: str | Path | None = None) -> PlatformDirectory:
    """The shipped directory (read once per process), or the one at `path` (read on every call)."""
    if path is None:
        return _load_default()
    return _load_file(Path(path))
