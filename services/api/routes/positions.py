"""`/api/v1/positions`: open (register) a position, list it, move its SL/TP, read the close journal."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response
from loguru import logger
from pydantic import ValidationError

from libs.common.broker import BrokerError
from libs.common.broker_positions import PositionsUnavailable
from libs.common.clock import ist_iso
from libs.common.fno import is_expired
from libs.common.models import MalformedRecord, Position, PositionState, PriceEntry, level_at_pct
from libs.common.money import rupees, to_paise
from libs.common.positions import PositionConflict, PositionNotFound
from services.api.deps import ApiKeyDep, ResourcesDep
from services.api.schemas import (
    SYMBOL_PATTERN,
    CloseList,
    CloseOut,
    ErrorOut,
    OpenPositionRequest,
    PositionList,
    PositionOut,
    SafetyNetOut,
    UpdateLevelsRequest,
    ValidationErrorOut,
    unprocessable,
)

router = APIRouter(prefix="/api/v1/positions", tags=["positions"])

SymbolPath = Annotated[str, Path(min_length=1, max_length=40, pattern=SYMBOL_PATTERN)]
_422: dict[int | str, dict[str, Any]] = {422: {"model": ValidationErrorOut, "description": "invalid request"}}
_MUTATING: dict[int | str, dict[str, Any]] = {
    **_422,
    400: {"model": ErrorOut, "description": "the body is not readable JSON"},
    401: {"model": ErrorOut, "description": "API key required"},
    413: {"model": ErrorOut, "description": "body too large"},
}


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())


async def _nets(res: ResourcesDep, symbols: list[str]) -> dict[str, SafetyNetOut]:
    """Each position's safety net as stored (`off` for all when SAFETY_NET=off or the broker keeps no GTTs)."""
    if res.safety_net is None:
        return dict.fromkeys(symbols, SafetyNetOut(state="off"))
    states = await res.safety_net.states(symbols)
    return {s: SafetyNetOut.model_validate(n.public()) for s, n in states.items()}


async def _one(res: ResourcesDep, position: Position) -> PositionOut:
    price = await res.cache.read([position.symbol])
    nets = await _nets(res, [position.symbol])
    return _out(position, price[position.symbol], res.clock.now(), nets[position.symbol])


def _out(
    position: Position, price: PriceEntry | MalformedRecord | None, now: float, net: SafetyNetOut | None = None
) -> PositionOut:
    entry = price if isinstance(price, PriceEntry) else None
    return PositionOut(
        symbol=position.symbol,
        instrument_key=position.instrument_key,
        side=position.side,
        quantity=position.quantity,
        entry_price=rupees(position.entry_price),
        stop_loss=None if position.stop_loss is None else rupees(position.stop_loss),
        take_profit=None if position.take_profit is None else rupees(position.take_profit),
        state=position.state.value,
        opened_at=ist_iso(position.opened_at),
        close_reason=None if position.close_reason is None else position.close_reason.value,
        close_attempts=position.close_attempts,
        last_error=position.last_error,
        ltp=rupees(entry.ltp) if entry else None,
        price_age_seconds=round(entry.age_s(now), 3) if entry else None,
        unrealized_pnl=rupees(position.pnl(entry.ltp)) if entry else None,
        safety_net=net,
    )


@router.get("", response_model=PositionList)
async def list_positions(res: ResourcesDep) -> PositionList:
    """Every open (or closing) position with its cached price."""
    rows = await res.store.list_open()
    good = [p for p in rows if isinstance(p, Position)]
    prices = await res.cache.read([p.symbol for p in good]) if good else {}
    nets = await _nets(res, [p.symbol for p in good]) if good else {}
    now = res.clock.now()
    return PositionList(
        positions=[_out(p, prices.get(p.symbol), now, nets.get(p.symbol)) for p in good],
        malformed=[str(p) for p in rows if isinstance(p, MalformedRecord)],
    )


@router.get("/closed", response_model=CloseList, responses=_422)
async def closed_positions(
    res: ResourcesDep, limit: Annotated[int, Query(ge=1, le=1000, description="newest closes to return")] = 100
) -> CloseList:
    """The journal of closes, newest first."""
    rows = await res.store.journal(limit)
    closes = []
    for record in rows:
        if isinstance(record, MalformedRecord):
            continue
        data = record.public()
        data["closed_at"] = ist_iso(record.closed_at)
        closes.append(CloseOut.model_validate(data))
    return CloseList(closes=closes, malformed=[str(r) for r in rows if isinstance(r, MalformedRecord)])


@router.get("/{symbol}", response_model=PositionOut, responses={404: {"model": ErrorOut}, **_422})
async def get_position(symbol: SymbolPath, res: ResourcesDep) -> PositionOut:
    """The position on `symbol` in any state (open, closing, closed)."""
    position = await res.store.get(symbol)
    if position is None:
        raise HTTPException(404, f"no position for {symbol}")
    return await _one(res, position)


@router.post(
    "",
    response_model=PositionOut,
    status_code=201,
    dependencies=[ApiKeyDep],
    responses={409: {"model": ErrorOut, "description": "a position on the symbol is already open"}, **_MUTATING},
)
async def open_position(body: OpenPositionRequest, res: ResourcesDep, response: Response) -> PositionOut:
    """Register an open position with SL/TP (absolute rupees or percentages of entry); the feed subscribes it."""
    instrument_key = body.instrument_key or res.instruments.key_of(body.symbol)
    if instrument_key is None:
        raise unprocessable(f"unknown symbol {body.symbol}: give its instrument_key (e.g. NSE_EQ|INE323A01026)")
    _check_contract(res, instrument_key, body.symbol, body.quantity)
    entry = to_paise(body.entry_price)
    stop_loss = to_paise(body.stop_loss) if body.stop_loss is not None else None
    take_profit = to_paise(body.take_profit) if body.take_profit is not None else None
    if body.stop_loss_pct is not None:
        stop_loss = level_at_pct(entry, body.side, body.stop_loss_pct, stop=True)
    if body.take_profit_pct is not None:
        take_profit = level_at_pct(entry, body.side, body.take_profit_pct, stop=False)
    try:
        position = Position(
            symbol=body.symbol,
            instrument_key=instrument_key,
            side=body.side,
            quantity=body.quantity,
            entry_price=entry,
            stop_loss=stop_loss,
            take_profit=take_profit,
            opened_at=res.clock.now(),
        )
    except ValidationError as exc:
        raise unprocessable(_validation_message(exc)) from None
    warning = await _check_broker_holds(res, position)
    try:
        await res.store.open(position)
    except PositionConflict as exc:
        raise HTTPException(409, f"a position on {body.symbol} is already {exc.state}") from None
    response.headers["Location"] = f"{router.prefix}/{position.symbol}"
    return (await _one(res, position)).model_copy(update={"warning": warning})


def _check_contract(res: ResourcesDep, instrument_key: str, symbol: str, quantity: int) -> None:
    """422 for a quantity that is not a whole number of lots (the exchange refuses any order for it, so no
    close could ever go out) or a contract that has stopped trading."""
    inst = res.instruments.by_key(instrument_key)
    if inst is None:
        return
    if quantity % inst.lot_size:
        raise unprocessable(
            f"quantity {quantity} of {symbol} is not a whole number of lots: the lot size is {inst.lot_size}"
        )
    if is_expired(inst, res.clock.now()):
        raise unprocessable(f"{symbol} has expired (trading ended 15:30 IST on its expiry date)")


async def _check_broker_holds(res: ResourcesDep, position: Position) -> str | None:
    """409 unless the broker holds at least the quantity, in the same direction and product. When its
    positions cannot be read now, the position is accepted with the returned warning (the reconcile checks)."""
    try:
        snapshot = await res.holdings.read()
    except PositionsUnavailable as exc:
        return _unconfirmed(position, str(exc))
    if snapshot is None:
        return None  # the broker keeps no positions (paper)
    if not snapshot.fresh:
        return _unconfirmed(position, "the broker could not be asked now; only an older snapshot is available")
    product = res.settings.order_product
    if snapshot.held(position.instrument_key, product, position.side) < position.quantity:
        holds = snapshot.describe(position.instrument_key, product)
        raise HTTPException(
            409,
            f"the broker holds {holds} of {position.symbol}; cannot guard {position.quantity} {position.side} "
            "(place the entry first, or register the quantity held)",
        )
    return None


def _unconfirmed(position: Position, reason: str) -> str:
    warning = f"not confirmed with the broker ({reason}); checked at the next reconcile"
    logger.warning(f"Position {position.symbol} registered {warning}")
    return warning


@router.delete(
    "/{symbol}",
    response_model=PositionOut,
    dependencies=[ApiKeyDep],
    responses={
        404: {"model": ErrorOut, "description": "no position on the symbol"},
        409: {"model": ErrorOut, "description": "the position is closing (an order may be in flight) or closed"},
        401: {"model": ErrorOut, "description": "API key required"},
        **_422,
    },
)
async def stop_guarding(symbol: SymbolPath, res: ResourcesDep) -> PositionOut:
    """Stop guarding an open position without sending any order (the feed unsubscribes it); its safety net
    GTT is cancelled first (503, nothing changed, when the broker cannot confirm that)."""
    current = await res.store.get(symbol)
    if res.safety_net is not None and current is not None and current.state is PositionState.OPEN:
        try:
            fired = await res.safety_net.disarm(current)
        except BrokerError as exc:
            raise HTTPException(503, f"could not cancel the safety net of {symbol} ({exc}); still guarded") from None
        if fired is not None:  # the stop was hit at the broker: the guard settles that exit, nothing is dropped
            detail = f"the safety net of {symbol} fired at the broker (order {fired.order_id}); the guard settles it"
            raise HTTPException(409, detail)
    try:
        removed = await res.store.remove(symbol)
    except PositionNotFound:
        raise HTTPException(404, f"no position for {symbol}") from None
    except PositionConflict as exc:
        raise HTTPException(409, f"position {symbol} is {exc.state}; it cannot be dropped now") from None
    logger.warning(f"{symbol}: no longer guarded (removed through the API; no order sent)")
    price = await res.cache.read([symbol])
    net = SafetyNetOut(state="off" if res.safety_net is None else "cancelled")
    return _out(removed, price[symbol], res.clock.now(), net).model_copy(update={"state": "removed"})


@router.patch(
    "/{symbol}",
    response_model=PositionOut,
    dependencies=[ApiKeyDep],
    responses={
        404: {"model": ErrorOut, "description": "no position on the symbol"},
        409: {"model": ErrorOut, "description": "the position is closing or closed"},
        **_MUTATING,
    },
)
async def update_levels(symbol: SymbolPath, body: UpdateLevelsRequest, res: ResourcesDep) -> PositionOut:
    """Move the stop-loss and/or take-profit of an open position (absolute rupees or percentages of entry)."""
    current = await res.store.get(symbol)
    if current is None:
        raise HTTPException(404, f"no position for {symbol}")
    stop_loss = to_paise(body.stop_loss) if body.stop_loss is not None else None
    take_profit = to_paise(body.take_profit) if body.take_profit is not None else None
    if body.stop_loss_pct is not None:
        stop_loss = level_at_pct(current.entry_price, current.side, body.stop_loss_pct, stop=True)
    if body.take_profit_pct is not None:
        take_profit = level_at_pct(current.entry_price, current.side, body.take_profit_pct, stop=False)
    try:
        updated = await res.store.update_levels(symbol, stop_loss, take_profit)
    except PositionNotFound:
        raise HTTPException(404, f"no position for {symbol}") from None
    except PositionConflict as exc:
        raise HTTPException(409, f"position {symbol} is {exc.state}; its levels can no longer move") from None
    except ValidationError as exc:
        raise unprocessable(_validation_message(exc)) from None
    return await _one(res, updated)
