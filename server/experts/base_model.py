"""The base model a server serves: where its weights are and what is known of it."""

from __future__ import annotations

from pathlib import Path

from server.manifest import embedded
from server.manifest.artifacts import BaseInfo, base_info_from_folder
from server.settings import Settings


def model_location(settings: Settings, *, prepare: bool) -> str | None:
    """Path or hub id of the base model; for the embedded model, None when not prepared and
    `prepare` is False."""
    if settings.model:
        return settings.model
    target = embedded.model_dir(settings.cache_dir)
    if embedded.is_prepared(target):
        return str(target)
    return str(embedded.prepare(settings.cache_dir)) if prepare else None


def base_info(settings: Settings, *, prepare: bool = False) -> BaseInfo:
    aliases = frozenset(settings.model_aliases) | (
        frozenset({embedded.EMBEDDED_MODEL_ID, "SmolLM2-135M-Instruct"}) if not settings.model else frozenset()
    )
    location = model_location(settings, prepare=prepare)
    if location and Path(location, "config.json").is_file():
        return base_info_from_folder(Path(location), settings.served_model_name, aliases)
    return BaseInfo(name=settings.served_model_name, aliases=aliases)
