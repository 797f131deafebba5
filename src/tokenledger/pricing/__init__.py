"""Pricing: what a model call costs, from bundled price data or operator overrides; nothing of
tenants.
"""
