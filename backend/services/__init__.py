"""Every write to the database goes through these keyword-only service functions.

users      accounts, password checks with login throttling, deactivation
sessions   browser sessions (hashed tokens in the database)
api_keys   creating, resolving and revoking API keys
runs       creating and editing runs, their authority keys and datasets
tokens     issuing access tokens against a run's auth mode, and logging each issuance
swarm      reading what the swarm monitor stored: live view, peers, time series, experts, totals
leaderboard  reading a run's leaderboard (the monitor writes it: backend.monitor.store)
"""
