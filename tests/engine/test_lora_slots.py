"""Adapter slots sized to the experts (server/settings.py `lora_slots`, used by
server/api/service.py for the engine's `max_loras`)."""

from __future__ import annotations

import pytest

from server.settings import LORA_SLOTS_CAP, Settings

pytestmark = pytest.mark.unit


def test_by_default_a_slot_for_each_lora_expert_up_to_the_cap():
    s = Settings()
    assert s.max_loras is None
    assert s.lora_slots(0) == 1  # the engine needs one slot to serve experts loaded later
    assert s.lora_slots(5) == 5
    assert s.lora_slots(LORA_SLOTS_CAP + 10) == LORA_SLOTS_CAP


def test_the_setting_overrides(monkeypatch):
    monkeypatch.setenv("EXPERT_MAX_LORAS", "3")
    assert Settings().lora_slots(9) == 3
    assert Settings(max_loras=12).lora_slots(2) == 12
