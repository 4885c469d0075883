"""Every Lua script is declared once, named after its file, and called by its SHA1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

import tether
from tether.store import scripts
from tether.store.batch import WriteBatch
from tether.store.scripts import Script

PACKAGE = Path(tether.__file__).parent
ECHO = Script("test_scripts/echo.lua", "return {KEYS[1], ARGV[1]}")


# Run apart: importing a package's every module configures logging as a worker would.
# A script is declared beside its Lua file, so only those packages are imported.
DECLARED = """
import importlib, json, pkgutil, sys
from tether.store.scripts import Script, registered
for package in sys.argv[1:]:
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(info.name)
holders = {}
for name, module in list(sys.modules.items()):
    if name.startswith("tether."):
        for attr, value in vars(module).items():
            if isinstance(value, Script) and attr.isupper():
                holders.setdefault(value.name, []).append(attr)
print(json.dumps({"declared": [s.name for s in registered()], "holders": holders}))
"""


def test_every_lua_file_is_declared_once_by_a_script_named_after_it() -> None:
    files = {str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.lua")}
    packages = sorted({str(Path(path).parent).replace("/", ".") for path in files})
    found = json.loads(
        subprocess.run(
            [sys.executable, "-c", DECLARED, *packages], capture_output=True, text=True, check=True
        ).stdout
    )
    declared = [name for name in found["declared"] if name.endswith(".lua")]
    assert sorted(declared) == sorted(files)
    for path in files:
        # INFLIGHT for inflight.lua: a reader finds the file from the name, and back.
        assert Path(path).stem.upper() in found["holders"][path], path


def test_a_script_redis_lost_is_loaded_again_and_runs_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.script_flush()  # as after a restart or a failover
    assert ECHO.run(client, keys=["k"], args=["v"]) == ["k", "v"]
    assert client.script_exists(ECHO.sha) == [True]
    assert ECHO.run(client, keys=["k"], args=["w"]) == ["k", "w"]


def test_a_script_error_is_raised_not_retried(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    failing = Script("test_scripts/fail.lua", "return redis.error_reply('no such thing')")
    with pytest.raises(redis.ResponseError, match="no such thing"):
        failing.run(client)


def test_a_pipeline_loads_every_script_where_redis_lost_them(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.script_flush()
    (reply,) = WriteBatch(client).run(lambda pipe: ECHO.add(pipe, 1, "k", "v"))
    assert reply == ["k", "v"]
    # Every declared script went with it: a direct call finds its script there.
    assert all(client.script_exists(*(s.sha for s in scripts.registered())))
