"""The layer rules (.importlinter) hold, and a violation of each would be caught.

`make test` runs `lint-imports` too; these tests also prove the contracts are not vacuous: each rule is
broken on purpose in a scratch copy of the tree, and lint-imports must say so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("domain", "dialogs", "bot", "integrations")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
               "sys.exit(lint_imports_command())"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_tree_keeps_the_layer_rules() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "*.json",
                                                                                     "static", "*.sqlite3"))
    shutil.copy(ROOT / ".importlinter", root / ".importlinter")
    return root


@pytest.mark.parametrize(("module", "body", "contract"), [
    ("dialogs/violation_bot.py", "import bot.config\n", "The layers"),
    ("dialogs/violation_integrations.py", "import integrations.registry\n", "The layers"),
    ("integrations/violation_dialogs.py", "import dialogs.model\n", "The layers"),
    ("integrations/violation_bot.py", "import bot.vault\n", "The layers"),
    ("domain/violation_up.py", "import dialogs.model\n", "The layers"),
    ("bot/channels/violation.py", "import integrations.registry\n", "bot.channels does not import integrations"),
    ("bot/violation_sandbox.py", "import integrations.sandbox_registry.store\n", "Only the code that mounts"),
])
def test_each_rule_catches_a_violation(scratch: Path, module: str, body: str, contract: str) -> None:
    path = scratch / module
    path.write_text(body)
    try:
        result = lint_imports(scratch)
    finally:
        path.unlink()
    assert result.returncode != 0, result.stdout[-2000:]
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken.replace("\n", " "), result.stdout[-3000:]
