"""`asyncio.TaskGroup` and `asyncio.timeout` on Python 3.10 too (via the `taskgroup` backport)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup, timeout, timeout_at
else:  # pragma: no cover - exercised only on Python 3.10
    from taskgroup import TaskGroup, timeout, timeout_at

__all__ = ["TaskGroup", "timeout", "timeout_at"]
