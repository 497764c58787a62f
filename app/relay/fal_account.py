"""Which fal account's webhooks count: fal signs for every account with the same keys.

A correct signature proves fal sent it, not that it belongs to us: any fal account can point its own
jobs' webhooks at our receiver. The account is `FALGATE_FAL_USER_ID`, or else learned (per replica)
from the first verified webhook of a request this gateway submitted, which only our own account's
jobs can produce.
"""

from __future__ import annotations


class FalAccount:
    def __init__(self, configured: str | None) -> None:
        self._configured = configured or None
        self._learned: str | None = None

    @property
    def user_id(self) -> str | None:
        return self._configured or self._learned

    def admits(self, user_id: str) -> bool:
        """True unless we know our account and this is another one."""
        known = self.user_id
        return known is None or known == user_id

    def learn(self, user_id: str) -> None:
        """A verified webhook for a request we submitted came from `user_id`: that is our account."""
        if self._configured is None and self._learned is None:
            self._learned = user_id
