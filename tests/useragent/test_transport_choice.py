"""Which push protocol a service URL means (`useragent/transport_choice.py`)."""

from __future__ import annotations

import pytest

from tidings.useragent import Http2Transport, WebSocketTransport, agent, http2, rfc8030
from tidings.useragent import transport_choice as choice
from tidings.useragent.transport_choice import make_transport


def test_transport_choice() -> None:
    assert isinstance(make_transport("h2c://127.0.0.1:1"), Http2Transport)
    assert isinstance(make_transport("h2://push.example"), Http2Transport)
    assert isinstance(make_transport("http://127.0.0.1:1"), WebSocketTransport)  # as before
    assert isinstance(make_transport("ws://127.0.0.1:1/"), WebSocketTransport)
    assert isinstance(make_transport("http://127.0.0.1:1", "rfc8030"), Http2Transport)
    with pytest.raises(ValueError):
        make_transport("h2c://127.0.0.1:1", "websocket")  # h2c:// is no WebSocket URL
    with pytest.raises(ValueError):
        make_transport("http://127.0.0.1:1", "carrier-pigeon")  # type: ignore[arg-type]


def test_old_module_names_stay_importable() -> None:
    """Names that moved out of agent.py, and http2.py, the old name of rfc8030.py."""
    assert agent.make_transport is make_transport and agent.PushProtocol is choice.PushProtocol
    from tidings.useragent import delivery, events

    assert agent.Handlers is events.Handlers and agent.HandlersFor is events.HandlersFor
    assert agent.MAX_HELD_PER_SCOPE == delivery.MAX_HELD_PER_SCOPE
    assert http2.Http2Transport is rfc8030.Http2Transport is Http2Transport
    assert set(http2.__all__) == set(rfc8030.__all__)
    for name in rfc8030.__all__:
        assert getattr(http2, name) is getattr(rfc8030, name)
