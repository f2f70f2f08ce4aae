"""`expert serve`: logging, the loopback-only rule without keys, and uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import sys

from server.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def serve(settings: Settings) -> int:
    import uvicorn

    from server.api.app import create_app

    configure_logging()
    log = logging.getLogger("expert_gateway")
    no_keys = not (settings.api_keys or settings.admin_keys or settings.keys_file)
    if no_keys:
        if not is_loopback(settings.host) and not settings.allow_public_without_keys:
            log.error(
                "refusing to bind %s with no keys configured: set EXPERT_API_KEYS / EXPERT_ADMIN_KEYS "
                "(or EXPERT_KEYS_FILE), or EXPERT_ALLOW_PUBLIC_WITHOUT_KEYS=true",
                settings.host,
            )
            return 2
        log.warning("no API keys configured: every client may call every endpoint")
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
    return 0
