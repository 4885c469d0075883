"""examples/custom_image's agents, loaded by real workers as its image loads them.

The image puts acme_agents under /app, which is on PYTHONPATH, and the dev
overlay names its module in TETHER_AGENT_MODULES; here the folder is on the
workers' PYTHONPATH and the module list is the one the overlay sets. A ticket
goes through planner and executor, and the answer is the tool's.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.stacks import stop_in_background
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "examples" / "custom_image"


def _dev_overlay_modules() -> list[str]:
    overlay = yaml.safe_load((ROOT / "deploy/k8s/overlays/dev/kustomization.yaml").read_text())
    (config,) = [g for g in overlay["configMapGenerator"] if g["name"] == "tether-config"]
    (line,) = [v for v in config["literals"] if v.startswith("TETHER_AGENT_MODULES=")]
    modules: list[str] = json.loads(line.split("=", 1)[1])
    return modules


def test_the_example_agents_image_answers_a_ticket_on_real_workers(tmp_path: Path) -> None:
    stack = DevStack(
        agent_modules=_dev_overlay_modules(),
        concurrency=1,
        env={"PYTHONPATH": str(IMAGE)},
        log_dir=tmp_path / "logs",
    )
    try:
        stack.start()
        rt = Runtime(Settings(redis_url=stack.redis_url))
        urgent = client.submit("triage", "The checkout page is down for everyone", runtime=rt)
        normal = client.submit("triage", "How do I change my invoice address?", runtime=rt)
        for run_id, priority in ((urgent, "urgent"), (normal, "normal")):
            done = client.wait(run_id, timeout_s=60, runtime=rt)
            assert done.status == "succeeded", done.error
            assert done.result == f"Priority: {priority}."
    finally:
        stop_in_background(stack)
