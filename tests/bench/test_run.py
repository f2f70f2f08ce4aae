"""bench/run.py's command line."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_an_unknown_section_is_refused_before_anything_starts(capsys):
    from bench.run import main

    with pytest.raises(SystemExit) as exc:
        main(["--only", "soft_prompt_path,nonsense", "--out", "/nonexistent-folder"])
    assert exc.value.code == 2
    assert "unknown section nonsense" in capsys.readouterr().err
