"""API keys and their roles, the request gate, the per-key rate limit and job cap."""
