"""Pick the backend of each channel from the settings (CONTRACT §1), one module per backend."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from dispatch.channels.base import Channel
from dispatch.config.settings import Settings
from dispatch.vocabulary import ChannelName

log = logging.getLogger(__name__)


def build_channels(settings: Settings) -> dict[str, Channel]:
    """The backend serving each channel ('email', 'sms', 'letter')."""
    from dispatch.channels.outbox import OutboxChannel

    out: dict[str, Channel] = {}
    if settings.email_backend == "outbox":
        out[ChannelName.EMAIL] = OutboxChannel(
            settings.outbox_dir, ChannelName.EMAIL, default_sender=settings.mail_from
        )
    else:
        out[ChannelName.EMAIL] = _provider_backend(settings, ChannelName.EMAIL, settings.email_backend)
    if settings.sms_backend == "outbox":
        out[ChannelName.SMS] = OutboxChannel(settings.outbox_dir, ChannelName.SMS)
    else:
        out[ChannelName.SMS] = _provider_backend(settings, ChannelName.SMS, settings.sms_backend)
    if settings.letter_backend == "outbox":
        out[ChannelName.LETTER] = OutboxChannel(settings.outbox_dir, ChannelName.LETTER)
    else:
        out[ChannelName.LETTER] = _provider_backend(settings, ChannelName.LETTER, settings.letter_backend)
    return out


def _provider_backend(settings: Settings, channel: ChannelName, backend: str) -> Channel:
    """Real providers live in their own modules, imported only when selected."""
    import importlib

    module = importlib.import_module(f"dispatch.channels.{backend}")
    return module.from_settings(settings, channel)


def capabilities(channels: dict[str, Channel]) -> dict[str, tuple[bool, dt.timedelta | None]]:
    """channel -> (can the backend hold a future delivery, how far ahead) for the due rule,
    which alone decides what a channel may do with it (letters never go ahead of their day:
    :data:`dispatch.rules.scheduling.UNSCHEDULABLE_CHANNELS`)."""
    return {
        name: (ch.max_schedule_ahead() is not None, ch.max_schedule_ahead()) for name, ch in channels.items()
    }


@contextmanager
def open_channels(settings: Settings) -> Iterator[dict[str, Channel]]:
    """The channels of :func:`build_channels`, closed when the block ends, however it ends."""
    channels = build_channels(settings)
    try:
        yield channels
    finally:
        close_channels(channels)


def close_channels(channels: dict[str, Channel]) -> None:
    """Close every channel; one that fails to close does not keep the others open."""
    for name, channel in channels.items():
        try:
            channel.close()
        except Exception:
            log.warning("closing the %s channel (%s) failed", name, channel.provider, exc_info=True)
