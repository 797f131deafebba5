"""The gateway: the providers' APIs through tokenledger, every call held, forwarded and metered."""
