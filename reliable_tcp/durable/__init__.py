"""Journals, so that a session survives a restart of either process: the
log format (``journal``), the journals in a directory (``directory``) and
the journal as a session uses it (``session_journal``)."""
