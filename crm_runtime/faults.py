"""Named fault-injection points for tests that kill processes.

``CRM_FAILPOINTS=consumer.after_db_commit`` makes the process SIGKILL itself
when it reaches that point, which is how the tests prove that a crash between
two steps loses nothing and doubles nothing. Unset in production.
"""

from __future__ import annotations

import os
import signal


def hit(active: frozenset[str], name: str) -> None:
    if name in active:
        os.kill(os.getpid(), signal.SIGKILL)
