"""Validation of place-order bodies (v2 and v3) as Upstox does it: a bad field gets a 400 envelope naming it."""

from __future__ import annotations

from typing import Any

from libs.common.instruments import Instrument
from libs.common.money import Paise, rupees_str
from services.sim import errors
from services.sim.errors import UpstoxError
from services.sim.market import Market

ORDER_TYPES = ("MARKET", "LIMIT", "SL", "SL-M")
VALIDITIES = ("DAY", "IOC")
PRODUCTS_V2 = ("I", "D", "CO", "MTF")
PRODUCTS_V3 = ("I", "D", "MTF")
TRANSACTION_TYPES = ("BUY", "SELL")
MAX_TAG_LEN = 40
MAX_MARKET_PROTECTION = 25


def _bad(message: str, path: str, value: Any = None, code: str = errors.INVALID_INPUT) -> UpstoxError:
    return UpstoxError(400, code, message, path, value)


def _number(body: dict[str, Any], name: str) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _bad(f"{name} must be a number >= 0", name, value)
    return float(value)


def _integer(body: dict[str, Any], name: str, minimum: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(f"{name} must be an integer >= {minimum}", name, value)
    return value


def _to_paise_on_tick(value: float, inst: Instrument, name: str) -> Paise:
    paise = Paise(round(value * 100))
    if abs(paise - value * 100) > 1e-6 or paise % inst.tick_size_paise:
        raise _bad(f"{name} must be a multiple of the tick size {rupees_str(inst.tick_size_paise)}", name, value)
    return paise


def validate(body: Any, *, version: int, market: Market) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object", "body")
    order_type = body.get("order_type")
    if order_type is None or order_type == "":
        raise _bad("Valid order type is required", "order_type", order_type, errors.ORDER_TYPE_REQUIRED)
    if order_type not in ORDER_TYPES:
        raise _bad("Invalid order_type", "order_type", order_type, errors.INVALID_ORDER_TYPE)
    validity = body.get("validity")
    if validity is None or validity == "":
        raise _bad("Validity is required", "validity", validity, errors.VALIDITY_REQUIRED)
    if validity not in VALIDITIES:
        raise _bad("Invalid validity", "validity", validity, errors.INVALID_VALIDITY)
    products = PRODUCTS_V3 if version == 3 else PRODUCTS_V2
    if body.get("product") not in products:
        raise _bad(f"product must be one of {', '.join(products)}", "product", body.get("product"))
    if body.get("transaction_type") not in TRANSACTION_TYPES:
        raise _bad("transaction_type must be BUY or SELL", "transaction_type", body.get("transaction_type"))
    key = body.get("instrument_token")
    idx = market.index.get(key) if isinstance(key, str) else None
    if idx is None:
        raise _bad("Invalid instrument_token", "instrument_token", key)
    inst = market.instruments[idx]
    if inst.is_index:
        raise _bad("Indices cannot be traded", "instrument_token", key)
    if market.expired(inst):
        raise _bad(f"{inst.trading_symbol} has expired; it no longer trades", "instrument_token", key)
    quantity = _integer(body, "quantity", 1)
    if quantity % inst.lot_size:
        raise _bad(f"quantity must be a multiple of the lot size {inst.lot_size}", "quantity", quantity)
    price = _number(body, "price")
    trigger = _number(body, "trigger_price")
    disclosed = _integer(body, "disclosed_quantity", 0)
    if disclosed > quantity:
        raise _bad("disclosed_quantity cannot exceed quantity", "disclosed_quantity", disclosed)
    is_amo = body.get("is_amo")
    if not isinstance(is_amo, bool):
        raise _bad("is_amo must be true or false", "is_amo", is_amo)
    tag = body.get("tag")
    if tag is not None and (not isinstance(tag, str) or len(tag) > MAX_TAG_LEN):
        raise _bad(f"tag must be a string of at most {MAX_TAG_LEN} characters", "tag", tag)
    protection = body.get("market_protection", 0)
    if isinstance(protection, bool) or not isinstance(protection, int | float):
        raise _bad("market_protection must be a number", "market_protection", protection)
    if protection != -1 and not 0 <= protection <= MAX_MARKET_PROTECTION:
        raise _bad(
            f"market_protection must be -1 (auto) or 0-{MAX_MARKET_PROTECTION} (%)", "market_protection", protection
        )
    if protection and order_type not in ("MARKET", "SL-M"):
        raise _bad("market_protection applies to MARKET and SL-M orders only", "market_protection", protection)
    slice_ = body.get("slice", False)
    if version == 3 and not isinstance(slice_, bool):
        raise _bad("slice must be true or false", "slice", slice_)
    if quantity > inst.freeze_quantity and not (version == 3 and slice_):
        raise _bad(
            f"quantity exceeds the freeze quantity {int(inst.freeze_quantity)}; send slice: true to split it",
            "quantity",
            quantity,
        )
    price_paise = trigger_paise = Paise(0)
    if order_type in ("LIMIT", "SL"):
        if price <= 0:
            raise _bad(f"price is required for {order_type} orders", "price", price)
        price_paise = _to_paise_on_tick(price, inst, "price")
    if order_type in ("SL", "SL-M"):
        if trigger <= 0:
            raise _bad(f"trigger_price is required for {order_type} orders", "trigger_price", trigger)
        trigger_paise = _to_paise_on_tick(trigger, inst, "trigger_price")
    return {
        "instrument": inst,
        "order_type": order_type,
        "validity": validity,
        "product": body["product"],
        "transaction_type": body["transaction_type"],
        "quantity": quantity,
        "price_paise": price_paise,
        "trigger_paise": trigger_paise,
        "disclosed_quantity": disclosed,
        "is_amo": is_amo,
        "tag": tag,
        "slice": bool(slice_) if version == 3 else False,
    }
