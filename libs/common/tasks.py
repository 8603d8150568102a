"""Moved to libs/common/service.py (the one lifecycle module); kept only for the monitor's import until it adopts
`supervise` (issue 15, helper core): delete this file then."""

from libs.common.service import cancel_and_wait

__all__ = ["cancel_and_wait"]
