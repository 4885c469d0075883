"""The CLI says which Redis it read, never with the password that opens it."""

from __future__ import annotations

import pytest

from tether.cli.connection import redis_shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://:S3CRET@h/0", "redis://:***@h/0"),
        ("redis://operator:S3CRET@[::1]:6379/0", "redis://operator:***@[::1]:6379/0"),
        # redis-py takes a password from the query string too.
        ("redis://h:6379/0?password=S3CRET", "redis://h:6379/0?password=***"),
        (
            "rediss://u:S3%40CRET@h:6380/1?ssl_keyfile_password=S3CRET&ssl_cert_reqs=required",
            "rediss://u:***@h:6380/1?ssl_keyfile_password=***&ssl_cert_reqs=required",
        ),
    ],
)
def test_the_redis_url_is_shown_without_its_passwords(url: str, shown: str) -> None:
    assert redis_shown(url) == shown
    assert "S3" not in redis_shown(url)
