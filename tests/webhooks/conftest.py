"""The webhook tests start real ``dispatch web`` processes with the web tests' fixture."""

from tests.web.conftest import web_server

__all__ = ["web_server"]
