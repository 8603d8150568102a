"""The account: profile, the registered static IP, the day's positions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.sim.deps import SimDep, TokenDep
from services.sim.errors import success
from services.sim.tokens import profile_data

router = APIRouter()


@router.get("/v2/user/profile")
async def profile(_: TokenDep) -> dict[str, Any]:
    return success(profile_data())


@router.get("/v2/user/ip")
async def static_ips(sim: SimDep, _: TokenDep) -> dict[str, Any]:
    return success(
        {
            "primary_ip": sim.settings.sim_host,
            "secondary_ip": None,
            "primary_ip_updated_at": None,
            "secondary_ip_updated_at": None,
        }
    )


@router.get("/v2/portfolio/short-term-positions")
async def positions(sim: SimDep, _: TokenDep) -> dict[str, Any]:
    return success(sim.orders.position_rows())
