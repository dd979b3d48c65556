"""Old name of `tidings.useragent.rfc8030` (the RFC 8030 transport), kept as an alias."""

from tidings.useragent.rfc8030 import *  # noqa: F403
from tidings.useragent.rfc8030 import __all__ as __all__
