"""Talking to Redis: connections, the cluster, the lease, batch pacing, the Lua scripts, heartbeats."""
