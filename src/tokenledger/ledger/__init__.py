"""The write path: ingest, store, roll up, credits, holds settled, alerts, reprice, reconcile."""
