"""Redis over TLS: the certificate files each rediss:// URL carries, and what is wrong with them.

redis-py and kombu read TLS settings from a rediss:// URL's query, so the settings fold
TETHER_REDIS_TLS_*_FILE into each URL (tether.config) and check what they folded here.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


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


#: Where each TLS file goes in a rediss:// URL's query, by the setting that names it.
TLS_QUERY = {
    "ssl_ca_certs": "redis_tls_ca_file",
    "ssl_certfile": "redis_tls_cert_file",
    "ssl_keyfile": "redis_tls_key_file",
}
