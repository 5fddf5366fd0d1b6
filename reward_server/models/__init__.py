"""Model loaders and tensor helpers shared between rewards (torch is imported lazily by callers)."""
