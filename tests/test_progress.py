"""Progress without a terminal: plain lines, rarely, no carriage-return redraws."""

from __future__ import annotations

import io

from worldmodels import progress
from worldmodels.progress import progress_bar


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_a_bar_writes_a_few_plain_lines(monkeypatch):
    log = io.StringIO()  # a file: not a terminal
    bar = progress_bar(range(10_000), total=10_000, desc="train", file=log)
    for i in bar:
        bar.set_postfix(loss=f"{i:.1f}")  # a refresh per step on a terminal
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("train: 100%")
    assert "10000/10000" in lines[-1]

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)  # every refresh is a line now
    log = io.StringIO()
    bar = progress_bar(total=3, desc="evaluate", file=log, leave=False)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("evaluate: 100%")
    assert "\r" not in log.getvalue() and "\n\n" not in log.getvalue()


def test_on_a_terminal_it_is_plain_tqdm():
    term = FakeTTY()
    bar = progress_bar(total=2, desc="collect", file=term)
    bar.update(2)
    bar.close()
    assert type(bar).__name__ == "tqdm" and "\r" in term.getvalue()
