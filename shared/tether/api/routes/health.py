"""/healthz: the process answers; /readyz: it can reach Redis."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel

from tether.api.auth import runtime_of
from tether.runtime import Runtime

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 2.0


class Health(BaseModel):
    ok: bool
    detail: str


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(ok=True, detail="up")


@router.get("/readyz", response_model=Health, responses={503: {"description": "Redis unreachable"}})
def readyz(rt: Runtime = Depends(runtime_of)) -> Health:
    # A client of its own with short timeouts and no retries: the store's rides out a
    # minute of outage, which a readiness probe must report, not wait out.
    probe = redis.Redis.from_url(
        rt.settings.redis_url,
        socket_connect_timeout=READY_TIMEOUT_S,
        socket_timeout=READY_TIMEOUT_S,
        retry_on_timeout=False,
    )
    try:
        probe.ping()
    except redis.RedisError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"Redis at TETHER_REDIS_URL is unreachable: {type(exc).__name__}: {exc}",
        ) from exc
    finally:
        probe.close()
    return Health(ok=True, detail="Redis answers")
