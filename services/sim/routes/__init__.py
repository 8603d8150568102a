"""The simulator's endpoints, one router per resource (services.sim.app includes them)."""
