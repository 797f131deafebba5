"""Thresholds and webhooks: when a license crosses or re-arms one, and its delivery (the
outbox); never whether usage may spend.
"""
