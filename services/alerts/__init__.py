"""The alerts service: the guard's events and conditions as messages to a person (apprise), once each."""
