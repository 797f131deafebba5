"""The read side: reports and CSV from rollups, plus the ledger's tables and ingestion shapes;
it writes nothing.
"""
