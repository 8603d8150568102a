"""What the services share: settings, the Redis contract, models, logging, clock."""
