"""tokenledger: exact metering of LLM API spend, sold as credit-based licenses."""

__version__ = "0.1.0"
