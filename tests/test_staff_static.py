"""The staff pages' shared script (bot/staff/static/common.js): loaded by both pages before their own, the only
place the API call and the helpers live, and every string it asks for is on both pages' lists and in both
catalogs. The browser tests (tests/test_staff_browser.py, tests/test_broadcast_browser.py) drive the pages."""

from __future__ import annotations

import re
from pathlib import Path

from bot.i18n import Catalog
from bot.staff.broadcasts_api import SCRIPT_KEYS as BROADCAST_KEYS
from bot.staff.console import SCRIPT_KEYS as CONSOLE_KEYS
from tests.test_locales import CJK

STATIC = Path(__file__).resolve().parent.parent / "bot" / "staff" / "static"


def test_both_pages_load_the_shared_script_before_their_own() -> None:
    for page, own in (("console.html", "console.js"), ("broadcasts.html", "broadcasts.js")):
        html = (STATIC / page).read_text()
        strings, common, script = (html.index('id="strings"'), html.index("/staff/static/common.js"),
                                   html.index(f"/staff/static/{own}"))
        assert strings < common < script, page


def test_the_helpers_live_in_one_place() -> None:
    common = (STATIC / "common.js").read_text()
    assert not CJK.search(common)
    for name in ("api", "showError", "el", "when", "fill"):
        assert re.search(rf"\bfunction {name}\(", common), name
        for own in ("console.js", "broadcasts.js"):
            assert not re.search(rf"\bfunction {name}\(", (STATIC / own).read_text()), f"{name} again in {own}"
    catalog = Catalog.load()
    for key in re.findall(r'S\["([a-z_.A-Z]+)"\]', common):
        assert key in CONSOLE_KEYS and key in BROADCAST_KEYS, key
        assert key in catalog.messages["zh_CN"] and key in catalog.messages["en"], key
