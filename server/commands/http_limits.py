"""uvicorn's HTTP protocol with deadlines: how long a client may take to send a request.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`); a client that
sends half a request line, or headers with a `Content-Length` larger than the body it sends,
would hold its connection (and a slot of the server) forever. `DeadlineHttpToolsProtocol`
closes a connection whose request headers are not complete `read_timeout` seconds after
the connection opened (or after the previous response), and one whose request body is not
complete `read_timeout + BODY_GRACE_SECONDS` after its headers (the app answers 408 at
`read_timeout` where it reads the body itself; this is the backstop for every route).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

BODY_GRACE_SECONDS = 5.0


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    read_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._arm(self.read_timeout + BODY_GRACE_SECONDS)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # the next request's headers have the same deadline (idle time is keep-alive's)
            self._arm(self.read_timeout + self.timeout_keep_alive)


def protocol_with_deadline(read_timeout: float) -> type[DeadlineHttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)` with this deadline."""
    return type("DeadlineHttpToolsProtocol", (DeadlineHttpToolsProtocol,), {"read_timeout": float(read_timeout)})
