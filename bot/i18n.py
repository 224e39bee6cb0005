"""Renders dialog messages from the gettext catalogs under locales/ (zh_CN default, en)."""

from __future__ import annotations

from pathlib import Path

from babel.messages.pofile import read_po

from dialogs.model import DEFAULT_LANG, LANGS, Lines, Localized, Msg, Param

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"


class MissingTranslation(KeyError):
    pass


class Catalog:
    def __init__(self, messages: dict[str, dict[str, str]]) -> None:
        self.messages = messages

    @classmethod
    def load(cls, directory: Path = LOCALES_DIR) -> Catalog:
        messages: dict[str, dict[str, str]] = {}
        for lang in LANGS:
            with (directory / lang / "LC_MESSAGES" / "messages.po").open("rb") as handle:
                catalog = read_po(handle, locale=lang)
            messages[lang] = {str(m.id): str(m.string) for m in catalog if m.id and m.string}
        return cls(messages)

    def text(self, key: str, lang: str) -> str:
        table = self.messages.get(lang) or self.messages[DEFAULT_LANG]
        try:
            return table[key]
        except KeyError:
            raise MissingTranslation(f"{lang}:{key}") from None

    def render(self, msg: Msg, lang: str) -> str:
        template = self.text(msg.key, lang)
        if not msg.params:
            return template
        values = {name: self._param(value, lang) for name, value in msg.params.items()}
        return template.format_map(values)

    def _param(self, value: Param, lang: str) -> str:
        if isinstance(value, Msg):
            return self.render(value, lang)
        if isinstance(value, Localized):
            return value.en if lang == "en" else value.zh_CN
        if isinstance(value, Lines):
            return "\n".join(self._param(item, lang) for item in value.items)
        return str(value)
