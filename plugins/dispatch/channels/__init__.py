"""Delivery backends behind one interface (``base``); one module per backend.

Only the interface is imported here, so that ``import dispatch.channels`` stays light:
backends pull in their own dependencies (fpdf2, HTTP clients) when they are imported.
"""

from dispatch.channels.base import (
    Attachment,
    Channel,
    ChannelError,
    DeliveryUnknownError,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)

__all__ = [
    "Attachment",
    "Channel",
    "ChannelError",
    "DeliveryUnknownError",
    "FatalChannelError",
    "OutgoingMessage",
    "PermanentError",
    "SendResult",
    "TransientError",
]
