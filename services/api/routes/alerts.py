"""`/api/v1/alerts`: send a test message to every ALERT_URLS target (the first step after configuring them)."""

from __future__ import annotations

from fastapi import APIRouter
from loguru import logger

from libs.common.clock import ist_iso
from libs.common.notify import InvalidTarget, Outcome, send, target
from services.api.deps import ApiKeyDep, ResourcesDep
from services.api.schemas import AlertTestOut, AlertTestTarget, ErrorOut

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])

TEST_TITLE = "[INFO] Test alert from the Upstox resilience guard"


@router.post(
    "/test",
    response_model=AlertTestOut,
    dependencies=[ApiKeyDep],
    responses={401: {"model": ErrorOut, "description": "API key required"}},
)
async def send_test_alert(res: ResourcesDep) -> AlertTestOut:
    """Send a test message to each ALERT_URLS entry now and say, per entry, whether it went out."""
    now = res.clock.now()
    body = f"Alerts reach you here. Sent at {ist_iso(now)}."

    async def attempt(index: int) -> AlertTestTarget:
        try:
            chosen = target(index, res.settings.alert_urls[index])
        except InvalidTarget:
            return AlertTestTarget(index=index + 1, target="?", sent=False, error="not a valid apprise URL")
        outcome: Outcome = await send(chosen, TEST_TITLE, body)
        return AlertTestTarget(index=index + 1, target=chosen.label, sent=outcome.sent, error=outcome.error)

    # One at a time: apprise reports why a send failed through one process-wide logger.
    results = [await attempt(i) for i in range(len(res.settings.alert_urls))]
    sent = sum(r.sent for r in results)
    logger.info(f"Test alert sent to {sent} of {len(results)} target(s)")
    message = (
        f"sent to {sent} of {len(results)} target(s)" if results else "ALERT_URLS is empty: alerts go to the log only"
    )
    return AlertTestOut(timestamp=ist_iso(now), sent=sent, failed=len(results) - sent, targets=results, message=message)
