"""Pick the backend of each channel from the settings (CONTRACT §1), one module per backend."""

from __future__ import annotations

import datetime as dt

from dispatch.channels.base import Channel
from dispatch.config.settings import Settings


def build_channels(settings: Settings) -> dict[str, Channel]:
    """The backend serving each channel ('email', 'sms', 'letter')."""
    from dispatch.channels.outbox import OutboxChannel

    out: dict[str, Channel] = {}
    if settings.email_backend == "outbox":
        out["email"] = OutboxChannel(settings.outbox_dir, "email", default_sender=settings.mail_from)
    else:
        out["email"] = _provider_backend(settings, "email", settings.email_backend)
    if settings.sms_backend == "outbox":
        out["sms"] = OutboxChannel(settings.outbox_dir, "sms")
    else:
        out["sms"] = _provider_backend(settings, "sms", settings.sms_backend)
    if settings.letter_backend == "outbox":
        out["letter"] = OutboxChannel(settings.outbox_dir, "letter")
    else:
        out["letter"] = _provider_backend(settings, "letter", settings.letter_backend)
    return out


def _provider_backend(settings: Settings, channel: str, backend: str) -> Channel:
    """Real providers live in their own modules, imported only when selected."""
    import importlib

    module = importlib.import_module(f"dispatch.channels.{backend}")
    return module.from_settings(settings, channel)


def capabilities(channels: dict[str, Channel]) -> dict[str, tuple[bool, dt.timedelta | None]]:
    """channel -> (can schedule a future delivery, how far ahead) for the due rule."""
    caps: dict[str, tuple[bool, dt.timedelta | None]] = {}
    for name, ch in channels.items():
        ahead = ch.max_schedule_ahead()
        caps[name] = (ahead is not None and name != "letter", ahead)
    return caps
