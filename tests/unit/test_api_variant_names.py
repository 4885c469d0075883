"""POST /v1/events refuses a variant's name (eval:...) without importing the package
behind the variant: the console process never loads the evaluation package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tether.escalation import operators

# A fresh interpreter: the test process itself has imported evaluation long ago.
_POSTS_AN_EVAL_NAME = """
import json, sys
from fastapi.testclient import TestClient
from tether.api import create_app
from tether.config import Settings
from tether.runtime import Runtime

redis_url, keys_file, token = sys.argv[1:4]
rt = Runtime(Settings(redis_url=redis_url, agent_modules=["tests.agents"], api_keys_file=keys_file))
with TestClient(create_app(rt, include_console=False)) as http:
    reply = http.post(
        "/v1/events",
        json={"event_id": "e-eval", "agent": "eval:calculator", "input": "add 2 and 3"},
        headers={"Authorization": "Bearer " + token},
    )
print(json.dumps({
    "status": reply.status_code,
    "detail": reply.json()["detail"],
    "imported": sorted(m for m in sys.modules if m.startswith("tether.evaluation")),
}))
"""


def test_posting_an_eval_name_leaves_the_evaluation_package_unimported(
    redis_url: str, tmp_path: Path
) -> None:
    token, key = operators.new_token()
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [{"name": "billing", "key_sha256": key}]}))
    done = subprocess.run(
        [sys.executable, "-c", _POSTS_AN_EVAL_NAME, redis_url, str(keys_file), token],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["status"] == 422
    assert "variant of a declared agent" in answer["detail"]
    assert answer["imported"] == []
