"""One router per resource: monitoring (health, emergency close, status) and positions."""
