"""The monitor service: stop-loss / take-profit protection on live, cached or stale prices.

`python -m services.monitor` runs it (`--check` exits 0 while its heartbeat is fresh). In-process use,
as the tests do::

    monitor = Monitor(settings, redis, broker, clock)
    await monitor.start()          # reconcile closes left `closing`, ask the feed for every open symbol
    await monitor.sweep_once()     # one pass over every open position on its cached price
    monitor.on_notice(payload)     # one tick notice from the `ticks` channel
    await monitor.run()            # all of it, forever: heartbeat, sweep loop, tick listener
"""

from services.monitor.monitor import Monitor
from services.monitor.outputs import SweepReport

__all__ = ["Monitor", "SweepReport"]
