"""``python -m tether.worker.launch``: Celery's own command, gevent patched before Celery loads.

``celery -P gevent`` patches from inside the ``celery`` package, after its
lazy proxies (``celery.current_app`` and friends) exist. gevent's
``patch_all`` walks every live object looking for locks to replace; touching
those proxies imports ``celery._state`` and with it ``kombu.utils.functional``
part-way through the patching, so kombu keeps the OS's blocking
``time.sleep``. kombu's reconnect loop sleeps with it while the broker is
away, which freezes every greenlet of the process, the task in flight and the
/readyz probe among them, for each second of each retry.

Patching here, before anything of Celery is imported, leaves no proxy to
touch; Celery's own second ``patch_all`` then finds the work done. Every other
pool runs Celery's command unchanged.
"""

from __future__ import annotations

import sys


def pool_of(argv: list[str]) -> str | None:
    """The pool named by ``-P``/``--pool`` in a Celery command line, if any."""
    for index, arg in enumerate(argv):
        if arg in ("-P", "--pool") and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--pool="):
            return arg.partition("=")[2]
    return None


def patch_for(argv: list[str]) -> None:
    """Patch for the pool ``argv`` names, before Celery is imported; other pools need none."""
    if pool_of(argv) == "gevent":
        from gevent import monkey

        monkey.patch_all()


def main() -> None:
    patch_for(sys.argv)
    from celery.__main__ import main as celery_main

    celery_main()


if __name__ == "__main__":
    main()
