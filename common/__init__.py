"""The ground floor: configuration base, allowed values, atomic file writes, device choice (imports nothing of ours)."""
