"""The README's notebook example runs as printed, on the embedded model, and gives what it says."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO


@pytest.mark.integration
def test_the_readme_notebook_example_runs_and_round_trips(tmp_path, capsys):
    text = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## In a notebook"):], re.S).group(1)
    assert 'r.save("outputs/runs/notebook")' in code  # the example saves and reloads a run dir
    code = code.replace("outputs/runs/notebook", str(tmp_path / "notebook"))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    r, again, fig = scope["r"], scope["again"], scope["fig"]
    assert len(r.pairs) == 2 and set(r.pairs["category"]) == {"pairs", "subject"}
    assert set(r.stability["hook"]) == {"resid_post", "z", "z_head"}
    assert set(r.stability["layer"]) == {0, 5, 10} and set(r.stability["position"]) == {"edit", "after"}
    assert r.manifest["controls"]["n"] == 5
    assert type(fig).__name__ == "Figure" and len(fig.data) >= 1
    assert again.stability.equals(r.stability) and again.pairs.equals(r.pairs)
    assert "error detection" in capsys.readouterr().out  # print(r.summary())
