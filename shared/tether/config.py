"""Runtime configuration, read from TETHER_* environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TETHER_", env_file=".env", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = Field(default=None, description="Celery broker; defaults to redis_url")
    agent_modules: list[str] = Field(
        default_factory=list,
        description="Python modules that declare agents; workers import them at start",
    )

    # Celery delivery. A message whose worker dies is redelivered only after the
    # visibility timeout, and one running longer than it is delivered twice, so
    # it must sit well above the hard time limit of every task.
    visibility_timeout_s: int = 600
    # How often a worker sweeps for messages whose worker died (kombu's restore).
    unacked_restore_interval_s: int = 10
    # A run with no commit for this long gets what its state asks for published
    # again (tether.planner.reconcile): a message can be lost where kombu pops it
    # before recording it as unacknowledged. Above the hard limit, so a run busy
    # in a long step is left alone; re-driving a run that was only slow is harmless.
    run_stalled_after_s: int = 300
    # Re-driven this often at one step without a commit, a run is failing, not
    # losing messages (its messages end as dead letters): it ends `failed`.
    max_redrives: int = 5
    reconcile_interval_s: float = 15.0
    task_soft_time_limit_s: int = 120
    task_time_limit_s: int = 180
    # Celery task events, for Flower; off, each message costs less CPU (see bench/).
    task_events: bool = True
    worker_concurrency: int = 2
    worker_pool: str = "prefork"
    # The planner waits seconds on each model call and spends milliseconds of CPU
    # between calls: greenlets hold hundreds of calls in flight per process at a
    # few KB each, and gevent's pool, unlike the threads pool, enforces the task
    # time limits. Executors stay prefork: a tool may burn CPU or block in C code.
    planner_pool: str = "gevent"
    planner_concurrency: int = 200

    # Model endpoint. With no base URL, agents that ask for it get the scripted model.
    model_base_url: str | None = None
    model_api_key: str = "unset"
    model_name: str = "gpt-4o-mini"
    model_timeout_s: float = 60.0
    model_max_attempts: int = 3
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description='USD per million tokens, e.g. {"my-model": [0.5, 1.5]}; adds to the built-in table',
    )

    max_event_bytes: int = 256 * 1024
    run_ttl_s: int = 7 * 24 * 3600

    sentry_dsn: str | None = None
    log_level: str = "INFO"
    log_json: bool = False
    metrics_port: int | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
