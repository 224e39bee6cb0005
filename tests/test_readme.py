"""The README's settings table names every setting the code reads."""

from pathlib import Path

from bot.config import Settings


def test_every_setting_is_documented() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in readme]
    assert not missing
    assert "make run" in readme and "make test" in readme
