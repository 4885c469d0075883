"""Tether over TLS with client certificates and one ACL user per service.

A CA, a server certificate and a client certificate are made here; a real
redis-server listens on TLS only (clients must show a certificate) with the
ACL file of deploy/redis/users.acl and the default user off. The support
desk agent then runs end to end through DevStack, each service logged in as
its own user over rediss:// (the TLS files from TETHER_REDIS_TLS_*), the
operator deciding escalations through the CLI: no command of the run is
refused (ACL LOG stays empty). Then what must be refused is: plain text, a
client with no certificate, and each user reaching past its rights.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.backoff import NoBackoff
from redis.retry import Retry

from tether import client
from tether.config import Settings
from tether.dev.redis_server import find_redis_server, free_port, render_acl
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.worker import health

ROOT = Path(__file__).resolve().parents[2]
USERS = ("planner", "executor", "escalation", "operator", "flower", "monitor")
SERVICES = ("planner", "executor", "escalation")
# Only for reading ACL LOG in this test; no deploy file has it.
ADMIN_LINE = "user test-admin on >{password} ~* &* +@all"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / f"{name}.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)


@dataclass
class TLSRedis:
    port: int
    certs: Path
    passwords: dict[str, str]
    admin: redis.Redis

    def url(self, user: str) -> str:
        return f"rediss://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    def tls_env(self) -> dict[str, str]:
        return {
            "TETHER_REDIS_TLS_CA_FILE": str(self.certs / "ca.pem"),
            "TETHER_REDIS_TLS_CERT_FILE": str(self.certs / "client.pem"),
            "TETHER_REDIS_TLS_KEY_FILE": str(self.certs / "client.key"),
        }

    def connect(self, user: str, password: str | None = None, **tls: object) -> redis.Redis:
        options: dict[str, object] = {
            "ssl_ca_certs": str(self.certs / "ca.pem"),
            "ssl_certfile": str(self.certs / "client.pem"),
            "ssl_keyfile": str(self.certs / "client.key"),
        }
        options.update(tls)
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=user,
            password=password or self.passwords[user],
            ssl=True,
            ssl_cert_reqs="required",
            socket_connect_timeout=5,
            # A refusal is the answer these tests wait for: no retrying it.
            retry=Retry(NoBackoff(), 0),
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedis]:
    certs = Path(tmp_path_factory.mktemp("redis-tls"))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("tether test CA", ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    (certs / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(certs, name, _certificate(f"tether {name}", key, issuer, usage=usage), key)

    passwords = {user: secrets.token_hex(16) for user in (*USERS, "test-admin")}
    template = (ROOT / "deploy" / "redis" / "users.acl").read_text()
    acl = render_acl(template, {f"REDIS_{u.upper()}_PASSWORD": passwords[u] for u in USERS})
    acl += ADMIN_LINE.format(password=passwords["test-admin"]) + "\n"
    (certs / "users.acl").write_text(acl)

    port = free_port()
    log = certs / "redis.log"
    process = subprocess.Popen(
        [
            find_redis_server(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certs / "server.pem"),
            "--tls-key-file",
            str(certs / "server.key"),
            "--tls-ca-cert-file",
            str(certs / "ca.pem"),
            "--tls-auth-clients",
            "yes",
            "--aclfile",
            str(certs / "users.acl"),
            "--dir",
            str(certs),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(log),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = TLSRedis(port, certs, passwords, redis.Redis())
    server.admin = server.connect("test-admin")
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                output = (process.stdout.read() if process.stdout else b"").decode(errors="replace")
                output += log.read_text() if log.exists() else ""
                if "tls" in output.lower() and (
                    "bad directive" in output.lower() or "not supported" in output.lower()
                ):
                    pytest.fail(
                        "this redis-server was built without TLS; put one built with it on "
                        f"PATH (Debian's redis-server is): {output.strip()[-300:]}"
                    )
                pytest.fail(f"redis-server with TLS exited at start: {output[-2000:]}")
            try:
                server.admin.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        process.wait(10)


def _denials(server: TLSRedis) -> list[str]:
    return [
        f"{e['username']}: {e['reason']} {e['object']} ({e['context']})"
        for e in server.admin.acl_log(count=100)
        if e["username"] != "test-admin"
    ]


def test_the_support_desk_runs_over_tls_with_a_user_per_service(
    tls_redis: TLSRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The TLS files reach this process's Settings and, through the environment,
    # every worker and CLI process the stack starts.
    for key, value in tls_redis.tls_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUPPORT_DESK_DB", str(tmp_path / "support.sqlite3"))
    operator = tls_redis.url("operator")
    monkeypatch.setenv("TETHER_REDIS_URL", operator)
    tls_redis.admin.acl_log_reset()
    with DevStack(
        redis_url=operator,
        service_urls={service: tls_redis.url(service) for service in SERVICES},
        agent_modules=["examples.support_desk.agent"],
        log_dir=tmp_path / "logs",
    ) as stack:
        runtime = Runtime(Settings(redis_url=stack.redis_url))
        assert runtime.settings.redis_url.startswith("rediss://")
        assert "ssl_ca_certs=" in runtime.settings.redis_url
        answered = client.submit("support_desk", "Where is order 1001?", runtime=runtime)
        refund = client.submit(
            "support_desk", "Please refund order 1002, the jacket arrived torn.", runtime=runtime
        )
        declined = client.submit(
            "support_desk",
            "Refund order 1005, I changed my mind after using it for a month.",
            runtime=runtime,
        )
        # Two tasks on one thread: threads and long-term memory (the remember tool).
        meta = {"customer_id": "cust-ana"}
        remembered = [
            client.submit(
                "support_desk", goal, metadata=meta, thread_id="ana-chat", runtime=runtime
            )
            for goal in ("I am ana@example.com, what did I order?", "Any news on my last order?")
        ]
        deadline = time.monotonic() + 60
        pending: dict[str, str] = {}
        while len(pending) < 2 and time.monotonic() < deadline:
            pending = {
                record.escalation.run_id: record.escalation.escalation_id
                for record in client.pending_escalations(runtime)
            }
            time.sleep(0.2)
        assert {refund, declined} <= set(pending), pending
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for verb, run_id, reason in (
            ("approve", refund, "damaged on arrival"),
            ("reject", declined, "outside the return policy"),
        ):
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tether.cli.main",
                    "escalations",
                    verb,
                    pending[run_id],
                    "--by",
                    "dana@support",
                    "--reason",
                    reason,
                ],
                env=env,
                check=True,
                cwd=ROOT,
                timeout=60,
            )
        expected = {answered: "succeeded", refund: "succeeded", declined: "rejected"}
        expected.update({run_id: "succeeded" for run_id in remembered})
        for run_id, status in expected.items():
            try:
                state = client.wait(run_id, timeout_s=60, runtime=runtime)
            except TimeoutError as exc:
                pytest.fail(f"{exc}; refused by the ACL: {_denials(tls_redis)}")
            assert state.status == status, (run_id, state.status, state.error)
        # `tether health` as each service's own user: what its container probe runs.
        for service in SERVICES:
            problems, nodes = health.check(
                service, Settings(redis_url=tls_redis.url(service)), timeout_s=5
            )
            assert problems == [] and nodes, (service, problems)
    assert _denials(tls_redis) == []


def test_plain_text_and_clients_without_a_certificate_are_refused(tls_redis: TLSRedis) -> None:
    plain = redis.Redis.from_url(
        tls_redis.url("operator").replace("rediss://", "redis://"),
        socket_connect_timeout=2,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    no_certificate = tls_redis.connect("operator", ssl_certfile=None, ssl_keyfile=None)
    with pytest.raises(redis.ConnectionError):
        no_certificate.ping()
    # A server certificate that no trusted CA signed is refused by the client too.
    untrusted = tls_redis.connect("operator", ssl_ca_certs=str(tls_redis.certs / "client.pem"))
    with pytest.raises(redis.ConnectionError):
        untrusted.ping()
    assert tls_redis.connect("operator").ping()


def test_the_default_user_and_a_wrong_password_are_refused(tls_redis: TLSRedis) -> None:
    with pytest.raises(redis.AuthenticationError):
        tls_redis.connect("default", password="anything").ping()
    with pytest.raises(redis.AuthenticationError):
        tls_redis.connect("planner", password=tls_redis.passwords["executor"]).ping()


# (user, command) that its ACL must refuse: each one a door a compromised
# process of that kind must not open.
REFUSED = [
    ("planner", ("FLUSHALL",)),
    ("planner", ("KEYS", "*")),
    ("planner", ("SET", "tether:action:forged", "{}")),  # a tool result it did not run
    ("planner", ("CONFIG", "GET", "*")),
    ("executor", ("FLUSHALL",)),
    ("executor", ("HSET", "tether:run:run_x", "doc", "{}")),  # rewrite a run's state
    ("executor", ("ZADD", "tether:escalations:pending", "1", "esc_x")),
    ("executor", ("SET", "tether:autonomy:agent:tool", "x")),
    ("escalation", ("HSET", "tether:run:run_x", "doc", "{}")),
    ("escalation", ("SET", "tether:action:forged", "{}")),
    ("escalation", ("ACL", "LIST")),
    ("escalation", ("CLIENT", "KILL", "TYPE", "normal")),
    ("escalation", ("XADD", "tether:rejected", "*", "event", "{}")),
    ("operator", ("FLUSHDB",)),
    ("operator", ("CONFIG", "SET", "appendonly", "no")),
    ("operator", ("ACL", "SETUSER", "default", "on")),
    ("flower", ("GET", "tether:run:run_x")),
    ("flower", ("LPUSH", "tether.tools", "{}")),
    ("monitor", ("GET", "tether:run:run_x")),
    ("monitor", ("LPUSH", "tether.plan", "{}")),
    ("monitor", ("PUBLISH", "/0.celery.pidbox", "{}")),
]


@pytest.mark.parametrize(("user", "command"), REFUSED, ids=[f"{u}-{c[0]}" for u, c in REFUSED])
def test_each_user_is_refused_what_it_does_not_need(
    tls_redis: TLSRedis, user: str, command: tuple[str, ...]
) -> None:
    connection = tls_redis.connect(user)
    with pytest.raises(redis.exceptions.NoPermissionError):
        connection.execute_command(*command)


def test_what_a_user_may_only_read_it_can_read(tls_redis: TLSRedis) -> None:
    tls_redis.admin.hset("tether:run:run_ro", "status", "running")
    assert tls_redis.connect("executor").hget("tether:run:run_ro", "status") == b"running"
    assert tls_redis.connect("escalation").hget("tether:run:run_ro", "status") == b"running"
    assert tls_redis.connect("monitor").llen("tether.plan") >= 0
    # Inside a script too: Redis checks every command a script calls.
    with pytest.raises(redis.ResponseError, match=r"can't run this command|permission"):
        tls_redis.connect("executor").eval(
            "return redis.call('HSET', KEYS[1], 'status', 'succeeded')", 1, "tether:run:run_ro"
        )
