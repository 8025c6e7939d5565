"""Console sessions, kept in this process's memory: a cookie holds a random token, the table holds
its SHA-256 (a leaked table names no cookie). Bounded: at most MAX_SESSIONS, each ends
`lifetime` after sign-in; sign-out drops it. A restart signs everyone out, which is acceptable for an
admin tool and means there is no signing key to manage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["ConsoleSession", "SessionTable", "MAX_SESSIONS", "MAX_NOTICES"]

MAX_SESSIONS = 256
#: notices waiting for the next page of one session (more are dropped: a page shows a few)
MAX_NOTICES = 5


@dataclass
class ConsoleSession:
    #: who signed in, as the console shows and logs it ("API key tskey-api-abcd…", an email)
    who: str
    #: the form token every POST must carry
    csrf: str
    expires: float
    #: the API key this session was opened with: the session ends when that key does
    api_key_prefix: str | None = None
    #: (kind, text) shown once on the next page: "ok", "error"
    notices: list[tuple[str, str]] = field(default_factory=list)
    #: a secret (a new key) shown once on the next page, then forgotten
    secret: tuple[str, str] | None = None
    #: open server-sent event streams
    streams: int = 0

    def notice(self, kind: str, text: str) -> None:
        if len(self.notices) < MAX_NOTICES:
            self.notices.append((kind, text))

    def take_notices(self) -> list[tuple[str, str]]:
        out, self.notices = self.notices, []
        return out

    def take_secret(self) -> tuple[str, str] | None:
        out, self.secret = self.secret, None
        return out

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), str(token).encode())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionTable:
    def __init__(self, lifetime: float, *, clock=time.monotonic, max_sessions: int = MAX_SESSIONS) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self.max_sessions = max_sessions
        self._by_digest: OrderedDict[str, ConsoleSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_digest)

    def open(self, who: str, *, api_key_prefix: str | None = None) -> tuple[str, ConsoleSession]:
        """A new session; answers the cookie's token (kept nowhere) and the session. When the table
        is full, expired sessions go first, then the oldest."""
        self._drop_expired()
        while len(self._by_digest) >= self.max_sessions:
            self._by_digest.popitem(last=False)
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(who=who, csrf=secrets.token_urlsafe(32), expires=self.clock() + self.lifetime,
                                 api_key_prefix=api_key_prefix)
        self._by_digest[_digest(token)] = session
        return token, session

    def find(self, token: str | None) -> ConsoleSession | None:
        if not token or len(token) > 100:
            return None
        digest = _digest(token)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._by_digest[digest]
            return None
        return session

    def close(self, token: str | None) -> None:
        if token and len(token) <= 100:
            self._by_digest.pop(_digest(token), None)

    def _drop_expired(self) -> None:
        now = self.clock()
        for digest in [d for d, s in self._by_digest.items() if s.expires <= now]:
            del self._by_digest[digest]
