"""Operator roles in the operators file: what the HTTP API lets each operator do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.config import Settings
from tether.errors import ConfigError
from tether.escalation import operators
from tether.escalation.operators import Role


def _write(path: Path, entries: list[dict[str, str]]) -> str:
    path.write_text(json.dumps({"operators": entries}))
    return str(path)


def test_an_entry_without_a_role_is_an_approver(tmp_path: Path) -> None:
    _, key = operators.new_token()
    found = operators.load_operators(
        _write(tmp_path / "ops.json", [{"name": "al", "key_sha256": key}])
    )
    assert found["al"].role is Role.approver


def test_roles_are_read_and_ranked(tmp_path: Path) -> None:
    _, k1 = operators.new_token()
    _, k2 = operators.new_token()
    path = _write(
        tmp_path / "ops.json",
        [
            {"name": "vi", "key_sha256": k1, "role": "viewer"},
            {"name": "ad", "key_sha256": k2, "role": "admin"},
        ],
    )
    found = operators.load_operators(path)
    assert found["vi"].role is Role.viewer
    assert not found["vi"].role.allows(Role.approver)
    assert found["ad"].role.allows(Role.approver)
    assert found["ad"].role.allows(Role.admin)
    assert Role.approver.allows(Role.viewer)
    assert not Role.approver.allows(Role.admin)
    # the signing keys stay what load() gave before roles existed
    assert operators.load(path) == {"vi": bytes.fromhex(k1), "ad": bytes.fromhex(k2)}


def test_an_unknown_role_is_refused_with_its_entry(tmp_path: Path) -> None:
    _, key = operators.new_token()
    path = _write(tmp_path / "ops.json", [{"name": "al", "key_sha256": key, "role": "god"}])
    with pytest.raises(ConfigError, match=r"'al'.*role"):
        operators.load_operators(path)


def test_a_token_authenticates_as_its_operator_only(tmp_path: Path) -> None:
    token, key = operators.new_token()
    other, _ = operators.new_token()
    path = _write(tmp_path / "ops.json", [{"name": "al", "key_sha256": key, "role": "viewer"}])
    settings = Settings(operators_file=path)
    found = operators.authenticate(settings, token)
    assert found is not None and found.name == "al" and found.role is Role.viewer
    assert operators.authenticate(settings, other) is None
    assert operators.authenticate(settings, "") is None
    assert operators.authenticate(Settings(), token) is None
