"""Licenses: terms, credits and the one-active rule; the budget rules built on them live in
budgets/.
"""
