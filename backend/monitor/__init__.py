"""The swarm monitor: the site's read-only view of every active run's swarm.

    backend.monitor.records     what a reading holds, and the item-by-item checks (pure)
    backend.monitor.accounting  credit, sanity checks on claims, the decaying score (pure)
    backend.monitor.retention   downsampling old time-series points so history stays bounded
    backend.monitor.store       writing one reading: peers, leaderboard, point, status, experts
    backend.monitor.watcher     RunWatcher: the monitor's client-mode DHT peer in one run's swarm
    backend.monitor.lease       the database lease: only one monitor per database polls at a time
    backend.monitor.monitor     SwarmMonitor: the polling loop over every active run
    backend.monitor.service     MonitorService: start/stop from the site's lifespan or the CLI

It never writes to a swarm and is never on the training path. Readers of what it stores are in
`backend.services.swarm` and `backend.services.leaderboard`.
"""

from backend.monitor.monitor import MonitorConfig, MonitorHook, SwarmMonitor
from backend.monitor.service import MonitorService
from backend.monitor.watcher import RunSpec, RunWatcher

__all__ = ["MonitorConfig", "MonitorHook", "MonitorService", "RunSpec", "RunWatcher", "SwarmMonitor"]
