"""The write path: prepare, store, roll up, credits, holds settled, alerts, reprice, reconcile;
no reports.
"""
