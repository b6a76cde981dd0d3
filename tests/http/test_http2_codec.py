"""The HTTP/2 codec's sans-I/O pieces: settings from config (connection_keepalive included),
what each side advertises, header translation, and the error grading that keeps Envoy's
stream errors stream errors (refused streams, content-length), driven by an h2 client's
bytes with no socket."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import HeadersFrame
from pydantic import ValidationError

from podproxy.config.schema import Http2ProtocolOptions
from podproxy.http.http2.codec import (
    H2Endpoint,
    Http2Settings,
    http2_settings,
    is_messaging_error,
    make_codec_stats,
    request_block_to_h2,
    response_block_to_h2,
)
from podproxy.stats import Store


def client() -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    return c


def server_endpoint(settings: Http2Settings) -> tuple[H2Endpoint, Store]:
    store = Store()
    ep = H2Endpoint(settings, None, make_codec_stats(store))
    ep.tx_bytes = store.counter("tx")
    ep.h2.initiate_connection()
    ep.h2.data_to_send()
    return ep, store


def post(sid: int, length: int) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "app"),
        (":path", f"/{sid}"),
        ("content-length", str(length)),
    ]


def test_settings_from_options_with_keepalive() -> None:
    opts = Http2ProtocolOptions.model_validate(
        {
            "max_concurrent_streams": 7,
            "connection_keepalive": {
                "interval": "2s",
                "timeout": "0.5s",
                "interval_jitter": {"value": 50},
            },
        }
    )
    s = http2_settings(opts, 1000)
    assert (s.max_concurrent_streams, s.max_header_list_size) == (7, 1000)
    assert (s.keepalive_interval, s.keepalive_timeout, s.keepalive_jitter) == (2.0, 0.5, 0.5)
    plain = http2_settings(Http2ProtocolOptions(), 1000)
    assert plain.keepalive_interval is None


@pytest.mark.parametrize(
    ("keepalive", "error"),
    [
        ({"timeout": "1s", "connection_idle_interval": "1s"}, "connection_idle_interval"),
        ({"interval": "1s"}, "timeout"),
        ({"interval": "0.0001s", "timeout": "1s"}, "at least 1ms"),
        ({"timeout": "1s", "interval_jitter": {"value": 150}}, "value"),
    ],
)
def test_keepalive_config_errors(keepalive: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        Http2ProtocolOptions.model_validate({"connection_keepalive": keepalive})


def test_what_each_side_advertises() -> None:
    s = Http2Settings(max_concurrent_streams=5, max_header_list_size=2048)
    server = s.local_settings(client=False)
    assert server[SettingCodes.MAX_CONCURRENT_STREAMS] == 5
    # As Envoy: the client side measures header lists itself, so no limit is advertised.
    assert SettingCodes.MAX_HEADER_LIST_SIZE not in server
    pod_side = s.local_settings(client=True)
    assert pod_side[SettingCodes.MAX_HEADER_LIST_SIZE] == 2048
    assert SettingCodes.MAX_CONCURRENT_STREAMS not in pod_side


def test_header_translation_drops_connection_specific_fields() -> None:
    head = (
        b"GET /p?q HTTP/1.1\r\nhost: app\r\nconnection: x\r\nte: gzip\r\n"
        b"transfer-encoding: chunked\r\nx-a: 1\r\n\r\n"
    )
    assert request_block_to_h2(head, b"http") == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"app"),
        (b":path", b"/p?q"),
        (b"x-a", b"1"),
    ]
    resp = b"HTTP/1.1 404 Not Found\r\nkeep-alive: 5\r\nte: trailers\r\nx-b: 2\r\n\r\n"
    assert response_block_to_h2(resp) == [(b":status", b"404"), (b"x-b", b"2")]


def test_streams_over_the_limit_reach_the_endpoint() -> None:
    """h2 would end the connection (TooManyStreamsError); the endpoint gets the request and
    refuses it itself, with the header block decoded (HPACK stays in step)."""
    ep, _ = server_endpoint(Http2Settings(max_concurrent_streams=1))
    c = client()
    for sid in (1, 3, 5):
        c.send_headers(sid, post(sid, 0), end_stream=True)
    events = ep.h2.receive_data(c.data_to_send())
    got = [e.stream_id for e in events if isinstance(e, h2.events.RequestReceived)]
    assert got == [1, 3, 5]


def test_body_longer_than_content_length_resets_only_its_stream() -> None:
    ep, _ = server_endpoint(Http2Settings())
    c = client()
    c.send_headers(1, post(1, 3))
    c.send_data(1, b"abcdef", end_stream=True)
    c.send_headers(3, post(3, 2))
    c.send_data(3, b"ok", end_stream=True)
    events = ep.h2.receive_data(c.data_to_send())
    resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code, e.remote_reset) for e in resets] == [
        (1, ErrorCodes.PROTOCOL_ERROR, False)
    ]
    assert [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)] == [3]
    assert ep.codec.tx_reset.value == 1
    assert ep.codec.rx_messaging_error.value == 1
    assert ep.conn_unacked == 6  # the reset stream's bytes go back to the connection window
    sent = c.receive_data(ep.h2.data_to_send())
    assert [(e.stream_id, e.error_code) for e in sent if isinstance(e, h2.events.StreamReset)] == [
        (1, ErrorCodes.PROTOCOL_ERROR)
    ]


def test_messaging_errors_are_told_from_framing_errors() -> None:
    def error_for(headers: list[tuple[str, str]], sid: int = 1) -> ProtocolError:
        ep, _ = server_endpoint(Http2Settings())
        frame = HeadersFrame(sid, Encoder().encode(headers))
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        with pytest.raises(ProtocolError) as info:
            ep.h2.receive_data(client().data_to_send() + frame.serialize())
        return info.value

    good = post(1, 0)
    assert is_messaging_error(error_for([*good, ("X-Upper", "v")]))
    assert is_messaging_error(error_for([*good, ("connection", "close")]))
    assert is_messaging_error(error_for(good[:3]))  # no :path
    assert not is_messaging_error(error_for(good, sid=2))  # an even stream id: framing
