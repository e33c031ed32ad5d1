"""The threaded front end, the primary API: blocking calls, a reader and a
writer thread per connection, one timer thread for every channel's
deadlines. ``reliable_tcp.connect`` and ``reliable_tcp.listen`` are these."""
