"""The audit log: who changed what, written in the changing service's transaction; it never
decides anything.
"""
