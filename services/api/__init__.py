"""The api service: connection health, emergency close, status and positions over HTTP (FastAPI)."""
