"""The feed service: the Upstox v3 market-data WebSocket, decoded into the Redis price cache."""
