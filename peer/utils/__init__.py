"""Shared helpers with no networking of their own.

peer.utils.loop   the one background event loop per process, and the blocking bridge into it
peer.utils.aio    TaskGroup and timeouts on every supported Python (3.10 uses the backport)
"""
