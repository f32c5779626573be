"""The fit store: Redis-backed fit dictionary with keep-best writes, an embedded server, curation."""
