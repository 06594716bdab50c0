"""Reference implementations of every technique module: the single source of truth for labs/."""
