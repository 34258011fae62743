"""The README's Python snippets run as written (URL pointed at a test server) and print what
their comments say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_stories_are_under_15_lines() -> None:
    stories = snippets()[:3]
    assert len(stories) == 3
    for code in stories:
        assert len(code.strip().splitlines()) < 15, code


def test_snippets_run(start_server, capsys: pytest.CaptureFixture[str]) -> None:
    s = start_server()
    scope: dict[str, object] = {"__name__": "__main__"}
    out = []
    for i, code in enumerate(snippets()):
        exec(compile(code.replace("redis://127.0.0.1:6379", s.url), f"README snippet {i}", "exec"), scope)
        out.append(capsys.readouterr().out.strip())
    assert out[0] == "{'BDP': Decimal('5210.43'), 'TRAINING': Decimal('3.5')}"
    assert out[1] == "True"
    assert out[2].startswith("133 UsageInfo(used=Decimal('997.5'), limit=Decimal('1000'), remaining=Decimal('2.5')")
    assert out[3] == "settled"  # the holds snippet: a settled hold cannot be voided
    assert str(scope["hold"]) == "HoldResult(hold_id='1', available=Decimal('70'))"
    assert scope["balances"] == {"BDP": __import__("decimal").Decimal("5220.86")}
