"""Named deployment targets (frozen dataclasses keyed by a readable name)."""
