"""Organizations (the tenants) and what a reference to one means to a key; nothing about usage."""
