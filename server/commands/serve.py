"""`expert serve`: logging, the keys rules (an empty key set is an error; no keys binds
loopback only), and uvicorn with deadlines for slow clients (commands/http_limits.py).

A dead engine is not restarted in the process: `/health` turns 503 and, two seconds later,
the server stops and exits with status 3, so that its supervisor (Kubernetes restarts the
container; systemd with `Restart=on-failure`) starts a fresh one.

Log lines never carry raw control characters: text from a request or a manifest that ends
up in a message (a model name, an unknown key) is escaped, so it cannot forge log lines."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import sys

from server.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ENGINE_DIED_EXIT_CODE = 3
EXIT_AFTER_ENGINE_DEATH_SECONDS = 2.0

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")


def _escape_control(text: str) -> str:
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text
    )


class SafeFormatter(logging.Formatter):
    """One record, one line: CR, LF and other control characters in the message are escaped;
    a traceback (exc_info), written by the server itself, follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return _escape_control(line.replace("\n", "\\n"))


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def serve(settings: Settings) -> int:
    import uvicorn

    from server.api.app import create_app
    from server.api.auth import KeyConfigError, KeyRing
    from server.commands.http_limits import protocol_with_deadline

    configure_logging()
    log = logging.getLogger("expert_gateway")
    try:
        keys = KeyRing.from_settings(settings.api_keys, settings.admin_keys, settings.keys_file)
    except KeyConfigError as exc:
        log.error("refusing to start: %s", exc)
        return 2
    if not keys.enabled:
        if not is_loopback(settings.host) and not settings.allow_public_without_keys:
            log.error(
                "refusing to bind %s with no keys configured: set EXPERT_API_KEYS / EXPERT_ADMIN_KEYS "
                "(or EXPERT_KEYS_FILE), or EXPERT_ALLOW_PUBLIC_WITHOUT_KEYS=true",
                settings.host,
            )
            return 2
        log.warning("no API keys configured: every client may call every endpoint")
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level="info",
            access_log=False,
            http=protocol_with_deadline(settings.read_timeout),
        )
    )
    service = app.state.service

    def exit_soon() -> None:  # the engine died: answer 503 a moment, then stop serving
        asyncio.get_running_loop().call_later(EXIT_AFTER_ENGINE_DEATH_SECONDS, setattr, server, "should_exit", True)

    service.on_fatal.append(exit_soon)
    server.run()
    if service.fatal is not None:
        log.error("exiting with status %d: %s", ENGINE_DIED_EXIT_CODE, service.fatal)
        return ENGINE_DIED_EXIT_CODE
    return 0
