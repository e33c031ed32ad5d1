"""What both front ends share and that does not depend on how they wait:
options, the channel's status and statistics, how a session's end is
reported, reconnect backoff, and the socket helpers (options, probes,
closing in order)."""
