"""Admin accounts, login, tokens and ingest keys; it knows who calls, not what they may spend."""
