"""docs/dialogs.mmd is drawn from the machine; a stale copy fails here (run `make diagram`)."""

from pathlib import Path

from dialogs.machine import HANDLERS, mermaid


def test_committed_diagram_is_current() -> None:
    committed = (Path(__file__).resolve().parent.parent / "docs" / "dialogs.mmd").read_text()
    assert committed == mermaid(), "docs/dialogs.mmd is stale: run `make diagram`"


def test_every_state_is_drawn() -> None:
    drawn = mermaid()
    for state in HANDLERS:
        assert f'"{state}"' in drawn
