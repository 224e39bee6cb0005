"""Typed-intent accuracy on the labelled set in tests/data/intents.tsv: prints top-1 accuracy, the confusions,
and how many misses would act on their own (a confident wrong guess) rather than offer a choice.

    .venv/bin/python bench/intents.py [--verbose]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.i18n import Catalog  # noqa: E402
from dialogs.intents import IntentModel, Understanding  # noqa: E402

DATA = ROOT / "tests" / "data" / "intents.tsv"


def load(path: Path = DATA) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, text = line.split("\t", 1)
        rows.append((label.strip(), text))
    return rows


def predicted(understanding: Understanding) -> str:
    """The label the bot acts as: the top intent, or `phone` for a bare number, or `none`."""
    if understanding.phone and not understanding.confident:
        return "phone"
    return understanding.guesses[0].intent if understanding.guesses else "none"


def main() -> None:
    model = IntentModel.from_catalog(Catalog.load().messages)
    rows = load()
    right = 0
    acted_wrongly = 0
    confusions: Counter[tuple[str, str]] = Counter()
    for label, text in rows:
        understanding = model.understand(text)
        guess = predicted(understanding)
        if guess == label:
            right += 1
            continue
        confusions[(label, guess)] += 1
        if understanding.confident and understanding.confident != label:
            acted_wrongly += 1
        if "--verbose" in sys.argv:
            print(f"  {label:>9} -> {guess:<9} {text}")
    print(f"utterances: {len(rows)}  top-1 accuracy: {right / len(rows):.1%}  ({right}/{len(rows)})")
    print(f"misses acted on without asking: {acted_wrongly} (each lands in a flow with its own way back)")
    for (label, guess), count in confusions.most_common(10):
        print(f"  {label} -> {guess}: {count}")


if __name__ == "__main__":
    main()
