"""`tether replay`'s process: the copy replay serves under an agent's name survives intake
loading the agent modules again (it looks for shadow candidates on every event)."""

from __future__ import annotations

import pytest

from tests.agents import calculator
from tether.agent import definition
from tether.agent.definition import get_agent, load_agent_modules
from tether.config import get_settings
from tether.evaluation.replay_runtime import serving
from tether.models import ScriptedModel
from tether.rollout.shadow import candidates


def test_loading_agent_modules_again_keeps_the_served_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TETHER_AGENT_MODULES", '["tests.agents"]')
    get_settings.cache_clear()
    monkeypatch.setattr(definition, "_registered_modules", set())
    load_agent_modules(["tests.agents"])
    recorded = ScriptedModel([], label="recorded answers")
    with serving(get_agent("calculator"), recorded):
        # What intake does per event; before, it raised "two different agents are named".
        assert candidates("calculator") == []
        load_agent_modules(["tests.agents"])
        assert get_agent("calculator").model is recorded
    assert get_agent("calculator") is calculator
    get_settings.cache_clear()
