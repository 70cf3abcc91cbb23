"""Cache backends: memory (default), Redis, tiered, aiocache adapter."""
