"""Agent variants: the seam through which the production path resolves ``<prefix>:<agent>``.

Evaluation plugs in as the ``eval`` variant through an entry point; production
modules name no variant, and a worker loads evaluation only when an ``eval:``
name reaches it.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from tether.agent import definition
from tether.agent.definition import (
    VARIANT_ENTRY_POINTS,
    AgentVariant,
    declared_name,
    get_agent,
    load_agent_modules,
    register_variant,
    variant_of,
)
from tether.errors import ConfigError, UnknownAgentError


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.agents"])


def _loud(base: definition.Agent) -> definition.Agent:
    return replace(base, name=f"loud:{base.name}", instructions=base.instructions.upper())


def test_a_registered_variant_derives_the_declared_agent_once() -> None:
    loud = register_variant(
        AgentVariant(prefix="loud", derive=_loud, refusal=lambda client, run_id: None)
    )
    try:
        agent = get_agent("loud:calculator")
        assert agent.name == "loud:calculator"
        assert agent.instructions == get_agent("calculator").instructions.upper()
        assert get_agent("loud:calculator") is agent
        assert variant_of("loud:calculator") is loud
        assert declared_name("loud:calculator") == "calculator"
    finally:
        definition._variants.pop("loud", None)
        definition._loaded.pop("loud:calculator", None)


def test_a_name_of_no_variant_is_an_unknown_agent() -> None:
    assert variant_of("calculator") is None
    assert variant_of("nosuch:calculator") is None
    assert declared_name("nosuch:calculator") == "nosuch:calculator"
    with pytest.raises(UnknownAgentError, match="nosuch:calculator"):
        get_agent("nosuch:calculator")


def test_two_variants_cannot_share_a_prefix() -> None:
    first = AgentVariant(prefix="twice", derive=_loud, refusal=lambda client, run_id: None)
    register_variant(first)
    try:
        with pytest.raises(ConfigError, match="'twice'"):
            register_variant(replace(first, derive=lambda agent: agent))
    finally:
        definition._variants.pop("twice", None)


def test_evaluation_is_the_eval_entry_point_and_loads_only_when_named() -> None:
    # A fresh process, as a worker is: the entry point alone brings evaluation in.
    code = (
        "import sys\n"
        "from tether.agent.definition import declared_name, get_agent, load_agent_modules\n"
        "load_agent_modules(['tests.agents'])\n"
        "assert declared_name('eval:calculator') == 'calculator'\n"
        "before = 'tether.evaluation.harness' in sys.modules\n"
        "agent = get_agent('eval:calculator')\n"
        "print(before, 'tether.evaluation.harness' in sys.modules, type(agent.model).__name__,"
        " agent.version == get_agent('calculator').version)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "HarnessModel", "True"]


def test_the_eval_entry_point_is_declared() -> None:
    from importlib.metadata import entry_points

    (declared,) = entry_points(group=VARIANT_ENTRY_POINTS, name="eval")
    assert declared.value == "tether.evaluation.harness:EVAL_VARIANT"


def test_an_eval_escalation_expires_as_its_declared_agent_without_loading_evaluation() -> None:
    # The escalation service reads the declared agent's expiry; it builds no eval: agent.
    code = (
        "import sys\n"
        "from tether.agent.definition import load_agent_modules\n"
        "from tether.config import Settings\n"
        "from tether.escalation import records\n"
        "from tether.runtime import Runtime\n"
        "from tether.transport.wire import Escalation, EscalationKind\n"
        "load_agent_modules(['tests.escalation_agents'])\n"
        "rt = Runtime(Settings(escalation_expiry_s=600))\n"
        "def expiry(agent):\n"
        "    return records.expiry_s(rt, Escalation(escalation_id='e', run_id='r', agent=agent,\n"
        "        kind=EscalationKind.approval_required, reason='pay'))\n"
        "print(expiry('impatient'), expiry('eval:impatient'),"
        " any(m.startswith('tether.evaluation') for m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2.0", "2.0", "False"]
