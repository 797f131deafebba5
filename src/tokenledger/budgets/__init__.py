"""Budgets and holds: a license's figures, the governing license, budget states, reservations
and changes of limits; it stores no events.
"""
