"""Tenant access: signed, expiring portal links to an organization's own read-only view."""
