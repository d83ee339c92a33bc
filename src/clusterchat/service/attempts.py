"""Attempts: back-off for logins and registrations, per account and per address.

Password guessing and mass registration cost the node a password hash each
(tens of ms of CPU by design) and, unchecked, let one client try 50 passwords
a second or create 1,500 accounts in 20 s. Here (docs/security.md):

* a wrong password counts against the account and against the client's
  address; past their free attempts each must wait, 1 s, 2 s, 4 s... up to
  5 minutes (``Backoff``); the right password ends the account's streak;
* every registration counts against the address;
* a refused attempt is answered errno 18 with ``retry_after`` (seconds) and
  is not hashed at all; a connection that keeps trying while it must wait is
  disconnected after ``max_refusals`` refusals.

The state is per node: a client spread over N nodes gets N times the free
attempts, never more than that.
"""

from clusterchat.protocol import ErrorCode
from clusterchat.service.backoff import Backoff
from clusterchat.service.errors import ChatError
from clusterchat.service.sessions import SessionState

__all__ = ["Attempts"]


class Attempts:
    """The node's memory of failed logins and of registrations.

    Args:
        per_account: Wrong passwords an account takes before waits begin.
        per_address: Wrong passwords from one address before waits begin.
        registrations: Registrations from one address before waits begin.
        max_refusals: Refused attempts on one connection before it is closed.
        wait_base: The first wait, in seconds (doubled per attempt).
        wait_cap: The longest wait.
        forget: Seconds without attempts that end a streak.
        max_keys: Accounts (and, apart, addresses) remembered at once.
    """

    def __init__(
        self,
        *,
        per_account: int,
        per_address: int,
        registrations: int,
        max_refusals: int,
        wait_base: float,
        wait_cap: float,
        forget: float,
        max_keys: int,
    ) -> None:
        def backoff(free: int) -> Backoff:
            return Backoff(
                free=free, base=wait_base, cap=wait_cap, forget=forget, max_keys=max_keys
            )

        self._accounts = backoff(per_account)
        self._addresses = backoff(per_address)
        self._registrations = backoff(registrations)
        self._max_refusals = max_refusals

    def check_login(self, state: SessionState, user_id: int) -> None:
        """Raise ``ChatError`` (errno 18) if this login must wait."""
        wait = max(
            self._accounts.retry_after(user_id),
            self._addresses.retry_after(state.session.address),
        )
        if wait:
            self._refuse(state, f"too many failed logins: try again in {wait} s", wait)

    def login_failed(self, state: SessionState, user_id: int) -> None:
        self._accounts.count(user_id)
        self._addresses.count(state.session.address)

    def login_succeeded(self, user_id: int) -> None:
        self._accounts.clear(user_id)

    def check_register(self, state: SessionState) -> None:
        """Raise ``ChatError`` (errno 18) if a registration from here must wait."""
        wait = self._registrations.retry_after(state.session.address)
        if wait:
            self._refuse(state, f"too many registrations: try again in {wait} s", wait)

    def registered(self, state: SessionState) -> None:
        self._registrations.count(state.session.address)

    def _refuse(self, state: SessionState, message: str, wait: int) -> None:
        state.refusals += 1
        disconnect = state.refusals >= self._max_refusals
        if disconnect:
            message += "; disconnected"
        raise ChatError(ErrorCode.TRY_LATER, message, retry_after=wait, disconnect=disconnect)
