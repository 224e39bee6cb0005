"""Typed intent: which errand a free-text message is about, ranked, from phrase lists kept in the catalogs.

Pure and cheap: the phrases are passed in (bot/ reads them from `intent.<name>.phrases` in both catalogs), and
the machine only asks when a state did not understand a text itself. A guess never acts destructively on its
own: every target below starts a flow that shows what it will do before doing it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dialogs.phones import parse_mainland_mobile

# Intent -> the pseudo-state it starts (see machine.STARTERS); greet/thanks/help/menu are answered in place.
TARGETS: Mapping[str, str] = {
    "lookup": "@lookup",
    "unbind": "@unbind",
    "recycle": "@recycle",
    "tag": "@tag",
    "plan": "@plan",
    "requests": "@requests",
    "guide": "@guide",
    "human": "@handoff",
    "settings": "@settings",
    "language": "@language",
    "forget": "@forget",
    "greet": "@menu",
    "thanks": "@menu",
    "help": "@menu",
    "menu": "@menu",
}
INTENTS: tuple[str, ...] = tuple(TARGETS)
# Offered as "did you mean" buttons; the conversational ones (greet, thanks, menu) would be no help there.
SUGGESTABLE: tuple[str, ...] = ("lookup", "unbind", "recycle", "tag", "plan", "requests", "guide", "human",
                                "settings", "language", "forget", "help")

# An exact phrase scores 1 + a little per character, so the longest phrase found wins ("微信解绑" over "解绑").
EXACT = 1.0
CONFIDENT_FUZZY = 0.72
MARGIN = 0.12

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)
_LATIN = re.compile(r"[a-z0-9']+")
_DIGITS = re.compile(r"[+＋]?[\d０-９][\d０-９ \-－]{7,18}[\d０-９]")


@dataclass(frozen=True)
class Guess:
    intent: str
    score: float


@dataclass(frozen=True)
class Understanding:
    """What a text seems to be: ranked intents, plus a mainland mobile number if one is in it."""

    guesses: tuple[Guess, ...]
    phone: str = ""

    @property
    def confident(self) -> str:
        """The intent to act on without asking, or '' when the user should pick."""
        if not self.guesses:
            return ""
        top = self.guesses[0]
        runner_up = self.guesses[1].score if len(self.guesses) > 1 else 0.0
        if top.score >= EXACT and (runner_up < EXACT or top.score - runner_up >= 0.02):
            return top.intent
        if top.score >= CONFIDENT_FUZZY and top.score - runner_up >= MARGIN:
            return top.intent
        return ""

    def top(self, n: int) -> tuple[str, ...]:
        return tuple(g.intent for g in self.guesses if g.intent in SUGGESTABLE)[:n]


def _squash(text: str) -> str:
    return _PUNCT.sub("", unicodedata.normalize("NFKC", text).casefold())


def _words(text: str) -> list[str]:
    return _LATIN.findall(unicodedata.normalize("NFKC", text).casefold())


def _is_latin(phrase: str) -> bool:
    return all(ord(ch) < 128 for ch in phrase)


def _bigrams(text: str) -> frozenset[str]:
    return frozenset(text[i:i + 2] for i in range(len(text) - 1))


def _one_edit(a: str, b: str) -> bool:
    """True when a and b differ by at most one insertion, deletion, substitution or adjacent swap."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diff = [i for i in range(la) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    if la > lb:
        a, b = b, a
    for i in range(len(b)):
        if b[:i] + b[i + 1:] == a:
            return True
    return False


@dataclass(frozen=True)
class _Phrase:
    intent: str
    latin: bool
    words: tuple[str, ...]
    squashed: str
    grams: frozenset[str]
    chars: frozenset[str]


class IntentModel:
    """Ranks intents for a text. Build once from the phrase lists; `understand` is a pure function after that."""

    def __init__(self, phrases: Mapping[str, Iterable[str]]) -> None:
        table: list[_Phrase] = []
        for intent, items in phrases.items():
            for raw in items:
                squashed = _squash(raw)
                if not squashed:
                    continue
                latin = _is_latin(squashed)
                table.append(_Phrase(intent, latin, tuple(_words(raw)) if latin else (), squashed,
                                     _bigrams(squashed), frozenset(squashed)))
        self._phrases = tuple(table)
        # Inverted indexes, so a message is scored only against phrases it shares a character (Chinese) or a
        # word, or a word one typo away (Latin), with: the scores are the same, the work is a fraction.
        self._by_char: dict[str, list[int]] = {}
        self._by_word: dict[str, list[int]] = {}
        for index, phrase in enumerate(table):
            if phrase.latin:
                for word in set(phrase.words):
                    self._by_word.setdefault(word, []).append(index)
            else:
                for ch in phrase.chars:
                    self._by_char.setdefault(ch, []).append(index)
        self._fuzzy_words = tuple(w for w in self._by_word if len(w) >= 4)

    @classmethod
    def from_catalog(cls, messages: Mapping[str, Mapping[str, str]], intents: Sequence[str] = INTENTS) -> IntentModel:
        """`messages` is lang -> key -> text; phrases are '|'-separated under `intent.<name>.phrases`."""
        phrases: dict[str, list[str]] = {}
        for intent in intents:
            for table in messages.values():
                phrases.setdefault(intent, []).extend(
                    p.strip() for p in table.get(f"intent.{intent}.phrases", "").split("|") if p.strip())
        return cls(phrases)

    def understand(self, text: str) -> Understanding:
        phone = phone_in(text)
        squashed = _squash(text)
        words = _words(text)
        spaced = " " + " ".join(words) + " "
        grams = _bigrams(squashed)
        chars = set(squashed)
        best: dict[str, float] = {}
        candidates: set[int] = set()
        for ch in chars:
            candidates.update(self._by_char.get(ch, ()))
        for word in set(words):
            candidates.update(self._by_word.get(word, ()))
            if len(word) >= 3:
                for known in self._fuzzy_words:
                    if abs(len(known) - len(word)) <= 1 and _one_edit(word, known):
                        candidates.update(self._by_word[known])
        for index in candidates:
            phrase = self._phrases[index]
            score = _score(phrase, squashed, spaced, words, grams, chars)
            if score > best.get(phrase.intent, 0.0):
                best[phrase.intent] = score
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], INTENTS.index(kv[0])))
        return Understanding(tuple(Guess(intent, round(score, 3)) for intent, score in ranked if score > 0.3), phone)


def _score(phrase: _Phrase, squashed: str, spaced: str, words: list[str], grams: frozenset[str],
           chars: set[str]) -> float:
    if phrase.latin:
        if " " + " ".join(phrase.words) + " " in spaced:
            return EXACT + 0.02 * len(phrase.squashed)
        if not phrase.words or not words:
            return 0.0
        hits = sum(1 for pw in phrase.words
                   if any(w == pw or (len(pw) >= 4 and len(w) >= 3 and _one_edit(w, pw)) for w in words))
        return 0.9 * hits / len(phrase.words) if hits == len(phrase.words) else 0.5 * hits / len(phrase.words)
    if phrase.squashed in squashed:
        return EXACT + 0.02 * len(phrase.squashed)
    if len(phrase.squashed) < 3:
        return 0.0
    unigram = sum(1 for ch in phrase.squashed if ch in chars) / len(phrase.squashed)
    if unigram < 0.5:
        return 0.0  # fewer than half its characters: no evidence, whatever the bigrams say
    bigram = len(phrase.grams & grams) / len(phrase.grams) if phrase.grams else 0.0
    return 0.55 * unigram + 0.45 * bigram


def phone_in(text: str) -> str:
    """The first mainland mobile number inside a text ("帮我解绑 138 0013 8000"), or ''."""
    for match in _DIGITS.finditer(text):
        parsed = parse_mainland_mobile(match.group(0))
        if parsed.problem == "ok":
            return parsed.national
    return ""
