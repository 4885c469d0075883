"""Runtime configuration, read from TETHER_* environment variables."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tether.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TETHER_", env_file=".env", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = Field(default=None, description="Celery broker; defaults to redis_url")
    # TETHER_REDIS_URL names a node of a Redis Cluster: run state shards across its
    # nodes by run (tether.keys' hash tags). The broker stays one Redis of its own.
    redis_cluster: bool = False
    # TLS for a rediss:// URL (state store and broker alike): the CA that signed
    # Redis's certificate, and this client's certificate and key where Redis asks
    # for one (tls-auth-clients). They are added to the URLs' query as redis-py
    # and kombu read it (ssl_ca_certs, ssl_certfile, ssl_keyfile), unless the URL
    # names its own; the server's certificate and host name are always verified.
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
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
    # A message handed to workers this often (each time after the first, its
    # worker died or its hard time limit stopped it) becomes one dead letter.
    max_deliveries: int = 5
    reconcile_interval_s: float = 15.0
    # An event on a thread waits this long after its publish for one published before
    # it (a lower thread_seq) that has not reached intake; then it goes ahead
    # (tether.memory.threads). The reconciler's interval is added to the wait.
    thread_gap_s: float = Field(default=5.0, ge=0)
    task_soft_time_limit_s: int = 120
    task_time_limit_s: int = 180
    # Celery task events, for Flower; off, each message costs less CPU (see bench/).
    task_events: bool = True
    worker_concurrency: int = 2
    worker_pool: str = "prefork"
    # The planner waits seconds on each model call and spends milliseconds of CPU
    # between calls: greenlets hold hundreds of calls in flight per process at a
    # few KB each. Celery's gevent pool enforces only the hard limit; the soft one
    # is raised by tether.time_limits. Both interrupt a greenlet only where it
    # yields (I/O, sleep), which a planner does all the time. Executors stay
    # prefork: a tool may burn CPU or block in C code.
    planner_pool: str = "gevent"
    planner_concurrency: int = 200

    # Model endpoint. With no base URL, agents that ask for it get the scripted model.
    model_base_url: str | None = None
    model_api_key: str = "unset"
    model_name: str = "gpt-4o-mini"
    # Every attempt, and every wait between two, must fit in one planner step's
    # soft time limit, or the limit cuts the retries short (checked at start-up).
    model_timeout_s: float = 30.0
    model_max_attempts: int = 3
    # The longest wait between two attempts, Retry-After and jitter included.
    model_retry_wait_max_s: float = 10.0
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description='USD per million input and output tokens, e.g. {"my-model": [0.5, 1.5]}; '
        "takes precedence over the genai-prices table",
    )
    # Sent as max_tokens with every call: it makes the answer's size, and so the
    # tokens and cost a step reserves before the call, a real upper bound.
    model_max_output_tokens: int = Field(default=1024, ge=1)
    # Which failures a FallbackModel hands to its next model (JSON list): any of
    # transient, rate_limited, timeout, server_error, permanent. A permanent one
    # (a 4xx: bad key, unknown model, bad request) is left out by default: the
    # same request fails on the next model too, or hides a broken configuration.
    model_fallback_on: list[str] = Field(
        default_factory=lambda: ["transient", "rate_limited", "timeout", "server_error"]
    )

    max_event_bytes: int = 256 * 1024
    # A tool's output kept in the run's state, result store and event log is cut to
    # this many bytes of JSON (tether.executor): a tool (or whoever feeds it) cannot
    # grow a run's state, and every model call after it, without bound.
    max_tool_output_bytes: int = Field(default=64 * 1024, ge=1024)
    # A run whose conversation grows past this many messages ends `failed`: a
    # model or tool looping (or an attacker feeding it) cannot grow a run without bound.
    max_run_messages: int = Field(default=500, ge=2)
    # Operator credentials for escalation decisions (tether.operators): a JSON file
    # of {"name": ..., "token_sha256": ...}. Set, every decision must carry a valid
    # token and is recorded under that operator's name; unset, decisions are taken
    # as they come, with --by as their free-text author.
    operators_file: str | None = None
    # The deciding operator's own token, read by `tether escalations decide` (or --token-file).
    operator_token: str | None = None
    run_ttl_s: int = 7 * 24 * 3600

    # SENTRY_DSN, Sentry's own variable, is read too.
    sentry_dsn: str | None = Field(
        default=None, validation_alias=AliasChoices("TETHER_SENTRY_DSN", "SENTRY_DSN")
    )
    sentry_environment: str | None = None
    log_level: str = "INFO"
    log_json: bool = False
    # Regexes (JSON list) whose matches are replaced by "[redacted]" in logs, the
    # event log and Sentry reports, on top of the model API key, sk-... keys and
    # bearer tokens, which always are.
    redact_patterns: list[str] = Field(default_factory=list)
    # /metrics of this process; each service on one host needs its own port.
    metrics_port: int | None = None
    # OTLP/HTTP collector base URL (e.g. http://otel-collector:4318); spans go to
    # its /v1/traces. OTEL_EXPORTER_OTLP_ENDPOINT is honoured too; with neither
    # set, nothing is traced (tether.tracing).
    otlp_endpoint: str | None = None
    # Webhooks told of every escalation opened, decided, or waiting past
    # escalation_waiting_after_s (tether.notifications): comma-separated URLs (or a JSON
    # list); each body is signed with HMAC-SHA256 under webhook_secret.
    webhook_urls: str = ""
    webhook_secret: str = ""
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 5
    webhook_retry_wait_max_s: float = 5.0
    escalation_waiting_after_s: float | None = Field(
        default=None,
        description="Age (s) at which a pending escalation's 'escalation_waiting' reminder goes "
        "out; unset: at TETHER_ESCALATION_WAITING_AT of its expiry window",
    )
    escalation_waiting_check_s: float = 30.0
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
        problems: list[str] = []
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
        problems += self._fold_tls()
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))
        return self

    def _fold_tls(self) -> list[str]:
        """Put the TLS files into the rediss:// URLs; what is wrong with them, as problems."""
        problems: list[str] = []
        tls = {
            "ssl_ca_certs": ("TETHER_REDIS_TLS_CA_FILE", self.redis_tls_ca_file),
            "ssl_certfile": ("TETHER_REDIS_TLS_CERT_FILE", self.redis_tls_cert_file),
            "ssl_keyfile": ("TETHER_REDIS_TLS_KEY_FILE", self.redis_tls_key_file),
        }
        urls = [("TETHER_REDIS_URL", self.redis_url)]
        if self.broker_url:
            urls.append(("TETHER_BROKER_URL", self.broker_url))
        if not any(url.startswith("rediss://") for _, url in urls):
            named = [name for name, value in tls.values() if value]
            if named:
                problems.append(
                    f"{', '.join(named)} set, but no Redis URL is rediss:// (TLS): the "
                    "connections would go in plain text; use rediss://"
                )
            return problems
        for setting, url in urls:
            if not url.startswith("rediss://"):
                continue
            folded, found = tls_url(url, {query: value for query, (_, value) in tls.items()})
            problems += tls_problems(setting, found)
            if setting == "TETHER_REDIS_URL":
                self.redis_url = folded
            else:
                self.broker_url = folded
        return problems

    @property
    def model_retry_schedule_s(self) -> float:
        """The longest one model call can take: every attempt timing out, every wait at its cap."""
        return (
            self.model_max_attempts * self.model_timeout_s
            + (self.model_max_attempts - 1) * self.model_retry_wait_max_s
        )


def tls_url(url: str, files: dict[str, str | None]) -> tuple[str, dict[str, str]]:
    """``url`` with the TLS ``files`` (query name -> path) it does not name itself added.

    Returns the URL and its TLS query parameters, ssl_cert_reqs included.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, path in files.items():
        if path and name not in query:
            query[name] = path
    query.setdefault("ssl_cert_reqs", "required")
    folded = urlunsplit(parts._replace(query=urlencode(query, safe="/")))
    return folded, {k: v for k, v in query.items() if k.startswith("ssl_")}


def tls_problems(setting: str, tls: dict[str, str]) -> list[str]:
    """What is wrong with a rediss:// URL's TLS parameters (from tls_url)."""
    problems: list[str] = []
    if tls.get("ssl_cert_reqs", "required").lower() != "required":
        problems.append(
            f"{setting} has ssl_cert_reqs={tls['ssl_cert_reqs']}: Tether verifies Redis's "
            "certificate; drop it, and name the CA that signed that certificate "
            "(TETHER_REDIS_TLS_CA_FILE)"
        )
    if tls.get("ssl_keyfile") and not tls.get("ssl_certfile"):
        problems.append(
            f"{setting}: a client key (TETHER_REDIS_TLS_KEY_FILE) without its certificate "
            "(TETHER_REDIS_TLS_CERT_FILE)"
        )
    for name, what in (
        ("ssl_ca_certs", "CA file (TETHER_REDIS_TLS_CA_FILE)"),
        ("ssl_certfile", "client certificate (TETHER_REDIS_TLS_CERT_FILE)"),
        ("ssl_keyfile", "client key (TETHER_REDIS_TLS_KEY_FILE)"),
    ):
        path = tls.get(name)
        if not path:
            continue
        try:
            with open(path, "rb") as file:
                file.read(1)
        except OSError as exc:
            problems.append(
                f"{setting}: the Redis TLS {what} {path} cannot be read "
                f"({exc.strerror or exc}); fix the path or its permissions"
            )
    return problems


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
