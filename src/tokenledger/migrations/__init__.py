"""Alembic migrations, shipped inside the package so that `tokenledger migrate` works anywhere."""
