"""Reserve → call → settle as a context manager (sync and async).

Entering the block holds the call's worst case against the user's and the project's budget
(or raises BudgetExceeded before anything is spent); `hold.settle(response)` records the real
cost once and frees the hold; leaving the block unsettled, normally or by an exception,
releases it. A hold the client could not release expires on the server (ttl_seconds).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._api import new_key
from .errors import BudgetClientError

if TYPE_CHECKING:
    from types import TracebackType

    from .client import AsyncClient, Client
    from .results import Reservation, Settlement

log = logging.getLogger("budget_client")


class _HoldState:
    def __init__(self, user: str, reserve_args: dict[str, Any]) -> None:
        self.user = user
        self._reserve_args = reserve_args
        # One key per logical call: a retried create holds once, a retried settle records once.
        self._reserve_key = new_key()
        self._settle_key = new_key()
        self.reservation: Reservation | None = None
        self.settlement: Settlement | None = None
        self.released = False

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

    def __init__(self, client: Client, user: str, **reserve_args: Any) -> None:
        super().__init__(user, reserve_args)
        self._client = client

    def __enter__(self) -> Hold:
        self.reservation = self._client.create_reservation(self.user, idempotency_key=self._reserve_key,
                                                           **self._reserve_args)
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

    def __init__(self, client: AsyncClient, user: str, **reserve_args: Any) -> None:
        super().__init__(user, reserve_args)
        self._client = client

    async def __aenter__(self) -> AsyncHold:
        self.reservation = await self._client.create_reservation(
            self.user, idempotency_key=self._reserve_key, **self._reserve_args)
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
