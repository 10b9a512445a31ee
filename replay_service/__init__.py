"""Redis-backed sequence replay (layout documented here once built)."""
