"""Provider bills: the providers' own usage and cost reports, imported and set against the
ledger per UTC day and model (owns provider_* tables; reads usage events, never writes them)."""
