"""Runtime configuration, read from TETHER_* environment variables."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Self

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tether.errors import ConfigError
from tether.redis_tls import TLS_QUERY, tls_problems, tls_url
from tether.store.ratelimits import RateLimit


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TETHER_", env_file=".env", extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis for run state, event logs, budgets and escalations; also the broker "
        "unless TETHER_BROKER_URL is set. A rediss:// URL gets the TETHER_REDIS_TLS_* files "
        "added to its query",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (a Redis); unset, the broker is TETHER_REDIS_URL. A rediss:// "
        "URL gets the TETHER_REDIS_TLS_* files added to its query",
    )
    redis_cluster: bool = Field(
        default=False,
        description="TETHER_REDIS_URL names a node of a Redis Cluster, across which run state "
        "shards by run (hash tags); needs TETHER_BROKER_URL, a plain Redis of its own",
    )
    redis_tls_ca_file: str | None = Field(
        default=None,
        description="For rediss:// URLs (state store and broker): the CA that signed Redis's "
        "certificate (else the system's CAs); added to each URL's query as ssl_ca_certs unless "
        "the URL names its own. The server's certificate and host name are always verified",
    )
    redis_tls_cert_file: str | None = Field(
        default=None,
        description="This client's certificate, where Redis has tls-auth-clients yes "
        "(ssl_certfile in each rediss:// URL)",
    )
    redis_tls_key_file: str | None = Field(
        default=None,
        description="The private key of TETHER_REDIS_TLS_CERT_FILE (ssl_keyfile in each "
        "rediss:// URL)",
    )
    agent_modules: list[str] = Field(
        default_factory=list,
        description="Python modules that declare agents (a JSON list); every worker imports "
        "them at start and registers each Agent at their top level",
    )

    visibility_timeout_s: int = Field(
        default=600,
        description="Seconds the Redis broker waits before it redelivers an unacknowledged "
        "message that no live consumer holds; must be above TETHER_TASK_TIME_LIMIT_S "
        "(checked at start-up), or a message still running is handed to a second worker",
    )
    unacked_restore_interval_s: int = Field(
        default=10,
        description="How often (s) a worker sweeps for unacknowledged messages past the "
        "visibility timeout that no live consumer holds, and puts them back (a dead worker's "
        "messages come back sooner, through consumer heartbeats)",
    )
    run_stalled_after_s: int = Field(
        default=300,
        description="A run with no commit for this long (s) gets what its state waits for "
        "published again by the planner's reconciler; must be above TETHER_TASK_TIME_LIMIT_S "
        "(checked at start-up), so a run busy in a long step is left alone",
    )
    max_redrives: int = Field(
        default=5,
        description="Re-drives at one step, its queue empty, after which a run is failing, not "
        "losing messages: it ends failed (category internal)",
    )
    max_deliveries: int = Field(
        default=5,
        description="Deliveries of one message (each after the first: its worker died, or its "
        "hard time limit stopped it) after which it becomes one dead letter",
    )
    reconcile_interval_s: float = Field(
        default=15.0, description="How often (s) the planner's reconciler looks for stalled runs"
    )
    thread_gap_s: float = Field(
        default=5.0,
        ge=0,
        description="How long (s) an event on a thread waits after its publish for one "
        "published before it that has not reached intake; then it goes ahead (one reconciler "
        "interval may be added)",
    )
    # Fairness and priority (tether.planner.admission); no cap set, no event waits.
    tenant_key: str = Field(default="tenant", description="Metadata field naming an event's "
        'tenant; events without it are tenant "default"')  # fmt: skip
    max_runs_in_flight: int | None = Field(default=None, ge=1, description="Runs started and "
        "not ended, all tenants together; more wait in Redis (unlimited if unset)")  # fmt: skip
    tenant_default_max_runs: int | None = Field(default=None, ge=1, description="Runs in "
        "flight per tenant not named in TETHER_TENANT_MAX_RUNS (unlimited if unset)")  # fmt: skip
    tenant_max_runs: dict[str, int] = Field(default_factory=dict, description="Runs in "
        'flight per named tenant, e.g. {"acme": 50}')  # fmt: skip
    batch_every: int = Field(default=4, ge=2, description="While both wait, every Nth run "
        "started is a batch-priority one, so interactive events never starve batch")  # fmt: skip
    metric_tenants: list[str] = Field(default_factory=list, description="Tenants named in "
        'metric labels besides "default" and those in TETHER_TENANT_MAX_RUNS; others '
        'are "other"')  # fmt: skip
    task_soft_time_limit_s: int = Field(
        default=120,
        description="Soft time limit per message: SoftTimeLimitExceeded is raised in it, under "
        "prefork by Celery and under gevent by tether.worker.time_limits",
    )
    task_time_limit_s: int = Field(
        default=180,
        description="Hard time limit per message, above the soft one (checked at start-up): a "
        "prefork pool process running it is killed and replaced; under gevent, the greenlet",
    )
    task_events: bool = Field(
        default=True,
        description="Celery task events, which Flower shows; off, each message costs less CPU",
    )
    worker_concurrency: int = Field(
        default=2,
        description="Pool size of each executor and escalation worker (--concurrency overrides it)",
    )
    worker_pool: str = Field(
        default="prefork",
        description="Celery pool of executor and escalation workers (--pool overrides it); "
        "prefork, because a tool may burn CPU or block in C code",
    )
    planner_pool: str = Field(
        default="gevent",
        description="The planner's Celery pool. It waits seconds on each model call and spends "
        "milliseconds of CPU around it: greenlets hold hundreds of calls per process at a few "
        "KB each; the soft time limit is armed by tether.worker.time_limits",
    )
    planner_concurrency: int = Field(
        default=200, description="Model calls one planner process holds at once"
    )

    model_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint, read by agents that build their model from the "
        "settings (as the support desk does); unset, they get the scripted model",
    )
    model_api_key: str = Field(default="unset", description="API key for that endpoint")
    model_name: str = Field(default="gpt-4o-mini", description="Model name at that endpoint")
    model_timeout_s: float = Field(
        default=30.0,
        description="Per-request timeout (s). Attempts x timeout plus the waits between them "
        "must fit in TETHER_TASK_SOFT_TIME_LIMIT_S (checked at start-up with an endpoint set)",
    )
    model_max_attempts: int = Field(
        default=3,
        description="Attempts per model call, retrying 408, 409, 429, 5xx, timeouts and "
        "connection errors with jittered backoff that honours Retry-After",
    )
    model_max_rate_limit_pauses: int = Field(
        default=30,
        ge=0,
        description="How many 429s with Retry-After one planning step waits out (off the "
        "worker, pausing the endpoint for every planner) before its run fails as "
        "model_transient: an endpoint that keeps refusing must not hold runs forever",
    )
    model_retry_wait_max_s: float = Field(
        default=10.0,
        description="The longest wait (s) between two model attempts, Retry-After and jitter "
        "included",
    )
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description='USD per million input and output tokens, e.g. {"my-model": [0.5, 1.5]}; '
        "takes precedence over the genai-prices table",
    )
    model_max_output_tokens: int = Field(
        default=1024,
        ge=1,
        description="The answer's cap, sent with every model call as max_tokens, so the tokens "
        "and cost a step reserves before the call are a real upper bound",
    )
    model_fallback_on: list[str] = Field(
        default_factory=lambda: ["transient", "rate_limited", "timeout", "server_error"],
        description="Which model failures a FallbackModel hands to its next model (JSON list of "
        "transient, rate_limited, timeout, server_error, permanent); permanent (a 4xx) is off "
        "by default: the same request fails there too, or hides a broken configuration",
    )
    model_rate_limits: dict[str, RateLimit] = Field(default_factory=dict, description="Shared "
        'rate limits by "BASE_URL|MODEL" or model name, e.g. {"gpt-4o-mini": {"requests": 500, '
        '"tokens": 200000, "window_s": 60}}; over an agent\'s model_rate_limit')  # fmt: skip
    max_event_bytes: int = Field(
        default=256 * 1024,
        description="Largest accepted TaskEvent, as JSON; a larger one is rejected "
        "(send a reference to large data instead)",
    )
    max_tool_output_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="A tool output over this many bytes of JSON is kept (result store, run "
        "state, event log) as its head and a truncated note; the call still counts as done",
    )
    max_run_messages: int = Field(
        default=500,
        ge=2,
        description="A run whose conversation holds more messages ends failed (policy_denied) "
        "before its next model call",
    )
    operators_file: str | None = Field(
        default=None,
        description="JSON file of the operators allowed to decide escalations (tether "
        "escalations operator-key prints their lines); set, only decisions signed by one of "
        "them are recorded; unset, --by is free text",
    )
    operator_token: str | None = Field(
        default=None,
        description="This operator's token, which signs tether escalations decisions "
        "(or --token-file)",
    )
    api_keys_file: str | None = Field(
        default=None,
        description="JSON file of the keys that may publish events through the HTTP API "
        '(POST /v1/events): {"keys": [{"name": ..., "key_sha256": ...}]}, each the sha256 '
        "of a key its publisher sends as a Bearer token; unset, only operators may publish",
    )
    console_host: str = Field(
        default="127.0.0.1",
        description="Address tether console binds the HTTP API and console to",
    )
    console_port: int = Field(
        default=8680,
        description="Port tether console serves the HTTP API and console on",
    )
    run_ttl_s: int = Field(
        default=7 * 24 * 3600,
        description="How long (s) a finished run's keys, its action results and decided "
        "escalations are kept",
    )
    sentry_dsn: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TETHER_SENTRY_DSN", "SENTRY_DSN"),
        description="Report failed runs, dead letters and task exceptions to Sentry "
        "(SENTRY_DSN is read too)",
    )
    sentry_environment: str | None = Field(
        default=None, description="The environment Sentry reports are tagged with"
    )
    log_level: str = Field(default="INFO", description="Level of Tether's structured logs")
    log_json: bool = Field(
        default=False, description="Log one JSON object per line instead of console text"
    )
    redact_patterns: list[str] = Field(
        default_factory=list,
        description="Regexes (JSON list) whose matches become [redacted] in logs, the event "
        "log, Sentry reports and spans, on top of the model API key, sk-... keys and bearer "
        "tokens, which always are",
    )
    metrics_port: int | None = Field(
        default=None,
        description="Serve Prometheus metrics on this port; each worker on one host needs its own",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector base URL (e.g. http://otel-collector:4318); each "
        "service exports one trace per run to its /v1/traces. OTEL_EXPORTER_OTLP_ENDPOINT "
        "works too; with neither, nothing is traced",
    )
    webhook_urls: str = Field(
        default="",
        description="Webhooks told of every escalation opened, decided, waiting or expiring: "
        "comma-separated URLs or a JSON list",
    )
    webhook_secret: str = Field(
        default="", description="Each webhook body is signed with HMAC-SHA256 under this secret"
    )
    webhook_timeout_s: float = Field(default=5.0, description="Timeout (s) of one webhook POST")
    webhook_max_attempts: int = Field(
        default=5, description="Attempts per webhook POST, with exponential backoff"
    )
    webhook_retry_wait_max_s: float = Field(
        default=5.0, description="The longest wait (s) between two webhook attempts"
    )
    escalation_waiting_after_s: float | None = Field(
        default=None,
        description="Age (s) at which a pending escalation's 'escalation_waiting' reminder goes "
        "out; unset: at TETHER_ESCALATION_WAITING_AT of its expiry window",
    )
    escalation_waiting_check_s: float = Field(
        default=30.0,
        description="How often (s) the escalation service looks for escalations due a reminder",
    )
    escalation_expiry_s: float = Field(
        default=86400.0,
        gt=0,
        description="Seconds an escalation waits for a decision before it expires and its run "
        "ends rejected (escalation_expired); an agent's escalation_expiry_s overrides it",
    )
    escalation_waiting_at: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Fraction of an escalation's expiry window after which the webhooks get "
        "its 'escalation_waiting' reminder",
    )
    escalation_expiring_at: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description="Fraction of an escalation's expiry window after which the webhooks get "
        "its last reminder, 'escalation_expiring'",
    )

    @property
    def webhooks(self) -> list[str]:
        text = self.webhook_urls.strip()
        if text.startswith("["):
            return [str(url) for url in json.loads(text)]
        return [url.strip() for url in text.split(",") if url.strip()]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # Raised as ConfigError rather than collected by pydantic: every entry
        # point reports a TetherError as one clear line and a non-zero exit.
        problems: list[str] = [
            f"TETHER_TENANT_MAX_RUNS gives tenant {tenant!r} the cap {cap}: a cap is 1 or more "
            "(runs in flight); remove the tenant to leave it uncapped"
            for tenant, cap in self.tenant_max_runs.items()
            if cap < 1
        ]
        if self.visibility_timeout_s <= self.task_time_limit_s:
            problems.append(
                f"TETHER_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) is not above "
                f"TETHER_TASK_TIME_LIMIT_S ({self.task_time_limit_s}): the broker would hand a "
                "message still running to a second worker; raise the visibility timeout"
            )
        if self.task_time_limit_s <= self.task_soft_time_limit_s:
            problems.append(
                f"TETHER_TASK_TIME_LIMIT_S ({self.task_time_limit_s}) is not above "
                f"TETHER_TASK_SOFT_TIME_LIMIT_S ({self.task_soft_time_limit_s}): a message would be "
                "killed before it can handle its soft limit; set the hard limit above the soft one"
            )
        if self.run_stalled_after_s <= self.task_time_limit_s:
            problems.append(
                f"TETHER_RUN_STALLED_AFTER_S ({self.run_stalled_after_s}) is not above "
                f"TETHER_TASK_TIME_LIMIT_S ({self.task_time_limit_s}): the reconciler would re-drive "
                "runs whose step is still running; raise the stall threshold"
            )
        # Agents build a model from TETHER_MODEL_* only where an endpoint is
        # configured; without one they get the scripted model, which never retries.
        schedule = self.model_retry_schedule_s
        if self.model_base_url and schedule >= self.task_soft_time_limit_s:
            problems.append(
                f"the model's retry schedule, TETHER_MODEL_MAX_ATTEMPTS ({self.model_max_attempts}) x "
                f"TETHER_MODEL_TIMEOUT_S ({self.model_timeout_s:g}) plus "
                f"{self.model_max_attempts - 1} x TETHER_MODEL_RETRY_WAIT_MAX_S "
                f"({self.model_retry_wait_max_s:g}) = {schedule:g} s, does not fit in "
                f"TETHER_TASK_SOFT_TIME_LIMIT_S ({self.task_soft_time_limit_s}): the soft limit "
                "would cut the retries short; lower the attempts, timeout or wait, or raise the "
                "time limits together"
            )
        for pattern in self.redact_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append(
                    f"TETHER_REDACT_PATTERNS has {pattern!r}, which is no regular expression "
                    f"({exc}); fix or remove it"
                )
        if self.redis_cluster and not self.broker_url:
            problems.append(
                "TETHER_REDIS_CLUSTER is set but TETHER_BROKER_URL is not: the Celery broker "
                "cannot run on a Redis Cluster; point TETHER_BROKER_URL at a plain Redis"
            )
        problems += self._tls_problems()
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))
        return self

    @model_validator(mode="before")
    @classmethod
    def _tls_files_into_urls(cls, data: Any) -> Any:
        """The input with the TLS files in each rediss:// URL's query, as redis-py and kombu read it.

        A transformation of the input before validation (the model is never written after
        it), so every client built from redis_url or broker_url gets TLS without knowing of it.
        """
        if not isinstance(data, dict):
            return data
        files = {query: data.get(field) for query, field in TLS_QUERY.items()}
        folded = dict(data)
        for field in ("redis_url", "broker_url"):
            url = data.get(field)
            if isinstance(url, str) and url.startswith("rediss://"):
                folded[field] = tls_url(url, files)[0]
        return folded

    def _tls_problems(self) -> list[str]:
        """What is wrong with the TLS files and the rediss:// URLs they went into."""
        urls = [("TETHER_REDIS_URL", self.redis_url)]
        if self.broker_url:
            urls.append(("TETHER_BROKER_URL", self.broker_url))
        if not any(url.startswith("rediss://") for _, url in urls):
            named = [
                f"TETHER_{field.upper()}" for field in TLS_QUERY.values() if getattr(self, field)
            ]
            if named:
                return [
                    f"{', '.join(named)} set, but no Redis URL is rediss:// (TLS): the "
                    "connections would go in plain text; use rediss://"
                ]
            return []
        problems: list[str] = []
        for setting, url in urls:
            if url.startswith("rediss://"):
                problems += tls_problems(setting, tls_url(url, {})[1])
        return problems

    @property
    def model_retry_schedule_s(self) -> float:
        """The longest one model call can take: every attempt timing out, every wait at its cap."""
        return (
            self.model_max_attempts * self.model_timeout_s
            + (self.model_max_attempts - 1) * self.model_retry_wait_max_s
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
