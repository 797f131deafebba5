"""The read side: reports from rollups in integers (queries), their JSON (answers) and the
CSV, plus the ledger's tables and ingestion shapes; it writes nothing.
"""
