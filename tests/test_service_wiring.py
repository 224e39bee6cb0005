"""Services get what they use (issue 9): nothing the runtime builds imports bot.runtime, not even for type checking,
so there is no import cycle through it. The contract is in .importlinter; here it is broken on purpose in a scratch
copy of the tree (a type-checking import, the way the old escalation module and ticket service took the Runtime),
and lint-imports must say so."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_layers import PACKAGES, ROOT, lint_imports

CONTRACT = "what the runtime builds does not import the runtime"


def test_a_service_that_imports_the_runtime_breaks_the_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.json", "static", "*.sqlite3"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    escalation = tmp_path / "bot" / "escalation.py"
    escalation.write_text(escalation.read_text() + "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                          "    from bot.runtime import Runtime\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout[-2000:]
    broken = result.stdout.split("Broken contracts")[-1].replace("\n", " ")
    assert CONTRACT in broken and "bot.escalation -> bot.runtime" in broken, result.stdout[-3000:]
