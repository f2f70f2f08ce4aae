"""`expert`: a setting the environment gets wrong ends the command with its name and the problem."""

from __future__ import annotations

import pytest

from server.cli import main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("EXPERT_KV_BLOCK_SIZE", "24", "EXPERT_KV_BLOCK_SIZE: Input should be a multiple of 16"),
        ("EXPERT_MAX_NUM_SEQS", "$(rm -rf /)", "EXPERT_MAX_NUM_SEQS: Input should be a valid integer"),
    ],
)
def test_an_invalid_setting_exits_2_with_its_variable_and_no_traceback(monkeypatch, capsys, variable, value, says):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as ended:
        main(["serve", "--port", "8123"])
    assert ended.value.code == 2
    out, err = capsys.readouterr()
    assert err.startswith("expert: invalid setting: ") and says in err
    assert "Traceback" not in out + err and value not in err  # the value itself is not echoed
