"""Reserve → call → settle as a context manager (sync and async).

Entering the block holds the call's worst case against the user's and the project's budget
(or raises BudgetExceeded before anything is spent); `hold.settle(response)` records the real
cost once and frees the hold; leaving the block unsettled, normally or by an exception,
releases it. A hold the client could not release expires on the server (ttl_seconds).

With `fallback=True`, a hold refused with a fallback model (402 carrying `error.fallback`, the
project's fallbacks) is asked once more for that model, and `hold.model` names the model the
hold is for: the caller sends the call to it. A second refusal is raised; fallbacks never chain.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._api import new_key
from .errors import BudgetClientError, BudgetExceeded

if TYPE_CHECKING:
    from types import TracebackType

    from .client import AsyncClient, Client
    from .results import Fallback, Reservation, Settlement

log = logging.getLogger("budget_client")


class _HoldState:
    def __init__(self, user: str, reserve_args: dict[str, Any], fallback: bool) -> None:
        self.user = user
        self._reserve_args = reserve_args
        self._may_fall_back = fallback
        # One key per logical call: a retried create holds once, a retried settle records once.
        # The fallback's hold is another request (another model): its own key.
        self._reserve_key = new_key()
        self._fallback_key = new_key()
        self._settle_key = new_key()
        self.reservation: Reservation | None = None
        self.settlement: Settlement | None = None
        self.released = False
        # The refusal's suggestion this hold was made for instead of the model asked; None otherwise.
        self.fallback: Fallback | None = None

    @property
    def model(self) -> str | None:
        """The model the hold is for: the one asked, or the fallback a refusal named (call this one)."""
        if self.reservation is None:
            raise RuntimeError("the hold is not open yet: use it in a with block")
        return self.reservation.model or self._reserve_args.get("model")

    def _fallback_args(self, refused: BudgetExceeded) -> dict[str, Any]:
        """The reservation's arguments for the fallback the refusal names, or the refusal raised again."""
        if not self._may_fall_back or refused.fallback is None:
            raise refused
        log.info("budget_client: %s has no room for %s (%s); holding for the fallback %s", self.user,
                 self._reserve_args.get("model"), refused.message, refused.fallback.model)
        self.fallback = refused.fallback
        return {**self._reserve_args, "model": refused.fallback.model, "idempotency_key": self._fallback_key}

    @property
    def id(self) -> int:
        if self.reservation is None:
            raise RuntimeError("the hold is not open yet: use it in a with block")
        return self.reservation.id

    @property
    def open(self) -> bool:
        return self.reservation is not None and self.settlement is None and not self.released

    def _release_failed(self, error: BudgetClientError) -> None:
        log.warning("budget_client: could not release reservation %s (%s); it expires on the server",
                    self.reservation.id if self.reservation else None, error)


class Hold(_HoldState):
    """A reservation held for the duration of a `with` block (see Client.reserve)."""

    def __init__(self, client: Client, user: str, *, fallback: bool = False, **reserve_args: Any) -> None:
        super().__init__(user, reserve_args, fallback)
        self._client = client

    def __enter__(self) -> Hold:
        try:
            self.reservation = self._client.create_reservation(self.user, idempotency_key=self._reserve_key,
                                                               **self._reserve_args)
        except BudgetExceeded as refused:
            self.reservation = self._client.create_reservation(self.user, **self._fallback_args(refused))
        return self

    def settle(self, completion: Any = None, **fields: Any) -> Settlement:
        """Record the call's real cost (a completion object, or the fields of record_cost) and free the hold."""
        self.settlement = self._client.settle_reservation(self.id, completion, idempotency_key=self._settle_key,
                                                          **fields)
        return self.settlement

    def release(self) -> Reservation:
        reservation = self._client.release_reservation(self.id)
        self.released = True
        return reservation

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.open:
            try:
                self.release()
            except BudgetClientError as error:  # never hide the block's own exception
                self._release_failed(error)


class AsyncHold(_HoldState):
    """A reservation held for the duration of an `async with` block (see AsyncClient.reserve)."""

    def __init__(self, client: AsyncClient, user: str, *, fallback: bool = False, **reserve_args: Any) -> None:
        super().__init__(user, reserve_args, fallback)
        self._client = client

    async def __aenter__(self) -> AsyncHold:
        try:
            self.reservation = await self._client.create_reservation(
                self.user, idempotency_key=self._reserve_key, **self._reserve_args)
        except BudgetExceeded as refused:
            self.reservation = await self._client.create_reservation(self.user, **self._fallback_args(refused))
        return self

    async def settle(self, completion: Any = None, **fields: Any) -> Settlement:
        self.settlement = await self._client.settle_reservation(self.id, completion,
                                                                idempotency_key=self._settle_key, **fields)
        return self.settlement

    async def release(self) -> Reservation:
        reservation = await self._client.release_reservation(self.id)
        self.released = True
        return reservation

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.open:
            try:
                await self.release()
            except BudgetClientError as error:
                self._release_failed(error)
