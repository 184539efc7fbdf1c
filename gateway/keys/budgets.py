"""Budgets in dollars per key, per team and per key and model, each over a calendar period.

A request is admitted only if, on every budget it counts against, what was
spent plus what is reserved by requests in flight plus this request's worst
case (its prompt and its max_tokens at the dearest deployment its model may
use) stays within the budget. The worst case is reserved at once, in the same
synchronous step as the check (so nothing can interleave on the event loop),
and settled to the actual cost when the answer ends. Concurrent requests can
then never spend past a budget, except by what a request's actual cost
exceeds its reservation (a prompt the estimate undercounted)::

    admitted  <=>  for each budget: spent + reserved + worst <= limit
    admit:         reserved += worst           (every budget of the request)
    settle:        reserved -= worst; spent += actual

A period is a calendar day, week (from Monday) or month in
``server.budget_timezone``, or ``total`` (never reset); a budget's spend
and reservations belong to the period they were made in, so a rollover
starts from nothing while the last period's requests still settle there.

The same arithmetic runs here, in this process (``LocalBudgetBook``), and as
two Lua scripts in Redis for several replicas (``redis_budgets.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from gateway.config import BudgetPeriod
from gateway.ledger import LedgerWriter, UsageQuery

EPSILON_USD = 1e-12  # sums of floats: a request that exactly fills a budget is admitted


@dataclass(frozen=True, slots=True)
class DollarBudget:
    """One budget: whose (``account``), how much per period, and how a refusal names it."""

    account: str  # "key:<name>", "team:<name>" or "key:<name>:model:<model>"
    limit_usd: float
    period: BudgetPeriod
    described: str  # "key team-a's daily budget of $25.00"


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one admitted request holds, until it settles."""

    held: tuple[tuple[str, str], ...]  # (account, period) of each budget
    usd: float
    remaining_usd: float  # the least any of its budgets had left, this request's reservation taken


@dataclass(frozen=True, slots=True)
class Refusal:
    budget: DollarBudget
    resets_at: float | None  # unix seconds; None for a total budget


@dataclass(slots=True)
class _Account:
    spent: float = 0.0
    reserved: float = 0.0


class BudgetBook(Protocol):
    """Where the budgets' state lives: this process, or Redis for several replicas."""

    timezone: ZoneInfo
    clock: Callable[[], float]

    async def reserve(self, budgets: Sequence[DollarBudget], usd: float) -> Reservation | Refusal:
        """Reserve ``usd`` on every budget, or none if one would pass its limit."""
        ...

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """The request ended: its reservation goes, what it really cost stays (never blocks)."""
        ...

    async def seed(self, spent: Mapping[tuple[str, str], float]) -> None:
        """Start each (account, period) from what the ledger says it spent (kept where one exists)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class LocalBudgetBook:
    """The budgets' state in this process (the ledger's spend is read into it at start: ``seed``)."""

    timezone: ZoneInfo
    clock: Callable[[], float] = time.time
    _accounts: dict[tuple[str, str], _Account] = field(default_factory=dict)

    async def reserve(self, budgets: Sequence[DollarBudget], usd: float) -> Reservation | Refusal:
        return self.reserve_now(budgets, usd)

    def reserve_now(self, budgets: Sequence[DollarBudget], usd: float) -> Reservation | Refusal:
        """``reserve``, in one synchronous step: nothing can interleave on the event loop."""
        now = self.clock()
        held, remaining = [], math.inf
        for budget in budgets:
            period = period_of(budget.period, now, self.timezone)
            account = self._accounts.setdefault((budget.account, period), _Account())
            left = budget.limit_usd - account.spent - account.reserved - usd
            if left < -EPSILON_USD:
                return Refusal(budget, resets_at(budget.period, now, self.timezone))
            held.append((budget.account, period))
            remaining = min(remaining, left)
        for key in held:
            self._accounts[key].reserved += usd
        return Reservation(tuple(held), usd, remaining)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """In the periods the reservation was made in."""
        for key in reservation.held:
            account = self._accounts.setdefault(key, _Account())  # a charge with nothing reserved (``charge``)
            account.reserved = max(0.0, account.reserved - reservation.usd)
            account.spent += actual_usd

    async def seed(self, spent: Mapping[tuple[str, str], float]) -> None:
        for key, usd in spent.items():
            self._accounts.setdefault(key, _Account()).spent += usd

    async def aclose(self) -> None:
        pass


async def charge(book: BudgetBook, budgets: Sequence[DollarBudget], usd: float) -> None:
    """Count ``usd`` already spent on ``budgets`` (an answer billed by its provider, never admitted here: a line of a
    native batch), over their limits if it must: the money is gone either way."""
    held = await book.reserve(budgets, 0.0)
    if isinstance(held, Refusal):  # already spent: still counted, in each budget's current period
        now = book.clock()
        held = Reservation(tuple((b.account, period_of(b.period, now, book.timezone)) for b in budgets), 0.0, 0.0)
    book.settle(held, usd)


def reset_time(refusal: Refusal, timezone: ZoneInfo) -> datetime | None:
    """When a refused budget's period ends, in the budgets' time zone (None: a total budget)."""
    return None if refusal.resets_at is None else datetime.fromtimestamp(refusal.resets_at, timezone)


async def spent_this_period(
    ledger: LedgerWriter, budgets: Mapping[DollarBudget, tuple[frozenset[str], str | None]], book: BudgetBook
) -> dict[tuple[str, str], float]:
    """What the ledger says each budget spent in its current period: where a restart picks up from."""
    now = book.clock()
    starts = {period_start(budget.period, now, book.timezone) for budget in budgets}
    rows = {start: await ledger.summarize(UsageQuery(start_time=start, group_by=("api_key", "model"))) for start in starts}
    spent: dict[tuple[str, str], float] = {}
    for budget, (keys, model) in budgets.items():
        start = period_start(budget.period, now, book.timezone)
        usd = sum(row["cost_usd"] for row in rows[start] if row["api_key"] in keys and model in (None, row["model"]))
        spent[(budget.account, period_of(budget.period, now, book.timezone))] = usd
    return spent


def period_of(period: BudgetPeriod, now: float, timezone: ZoneInfo) -> str:
    """The period ``now`` falls in, named by its first day ("2026-12-01"); "total" for a total budget."""
    start = period_start(period, now, timezone)
    return "total" if start is None else datetime.fromtimestamp(start, timezone).date().isoformat()


def period_start(period: BudgetPeriod, now: float, timezone: ZoneInfo) -> float | None:
    """Unix seconds of the current period's first midnight; None for a total budget."""
    if period == "total":
        return None
    today = datetime.fromtimestamp(now, timezone).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "weekly":
        today -= timedelta(days=today.weekday())
    elif period == "monthly":
        today = today.replace(day=1)
    return _midnight(today, timezone)


def resets_at(period: BudgetPeriod, now: float, timezone: ZoneInfo) -> float | None:
    """Unix seconds of the next period's first midnight; None for a total budget."""
    start = period_start(period, now, timezone)
    if start is None:
        return None
    first = datetime.fromtimestamp(start, timezone)
    if period == "daily":
        following = first + timedelta(days=1)
    elif period == "weekly":
        following = first + timedelta(days=7)
    else:
        following = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return _midnight(following.replace(hour=0, minute=0, second=0, microsecond=0), timezone)


def _midnight(day: datetime, timezone: ZoneInfo) -> float:
    # Rebuilt from the date: adding days across a daylight-saving change would land an hour off midnight.
    return datetime(day.year, day.month, day.day, tzinfo=timezone).timestamp()
