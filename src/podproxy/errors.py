"""The exception hierarchy of podproxy.

Errors are translated where the I/O happens: `OSError` and timeouts become `UpstreamError`
subclasses in the upstream code, and the forwarder maps each to exactly one Envoy local reply
and response flag. Config errors always carry the YAML path they are about.
"""

from __future__ import annotations


class PodproxyError(Exception):
    """Base of every error podproxy raises on purpose."""


class ConfigError(PodproxyError):
    """A bootstrap that cannot be used; `path` is its YAML path (`static_resources.clusters[0]`)."""

    def __init__(self, path: str, msg: str) -> None:
        self.path = path
        self.msg = msg
        super().__init__(f"{path}: {msg}" if path else msg)


class ConfigErrors(PodproxyError):
    """Several config errors found in one pass; validate mode prints them all."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class ProtocolError(PodproxyError):
    """A peer broke HTTP/1.1. `status_hint` is the status to answer a client with; None means
    close without an answer (as Envoy does for an HTTP/2 preface on an HTTP/1 listener)."""

    def __init__(self, msg: str, status_hint: int | None = 400) -> None:
        self.status_hint = status_hint
        super().__init__(msg)


class UnexpectedUpgrade(ProtocolError):
    """An upstream answered `101 Switching Protocols` to a request that asked no upgrade."""


class UpstreamError(PodproxyError):
    """A request could not be completed by the upstream host.

    `reset_reason` is Envoy's reset reason wording; `flag` the access-log response flag;
    `status` the status of the local reply when no response byte reached the client yet.
    """

    reset_reason = "connection termination"
    flag = "UC"
    status = 503
    # The host did not process the request (an HTTP/2 refused stream): safe to send again.
    refused = False


class UpstreamConnectError(UpstreamError):
    reset_reason = "connection failure"
    flag = "UF"


class UpstreamConnectTimeout(UpstreamConnectError):
    # Envoy 1.7-era wording for a connect timeout is also "connection failure".
    flag = "UF"


class UpstreamResetError(UpstreamError):
    """The upstream closed or reset the connection before a full response head."""

    reset_reason = "connection termination"
    flag = "UC"


class UpstreamRemoteReset(UpstreamResetError):
    """The host reset the stream (HTTP/2 RST_STREAM): Envoy's "remote reset"."""

    reset_reason = "remote reset"
    flag = "UR"


class UpstreamRefusedStream(UpstreamRemoteReset):
    """The host refused the stream (REFUSED_STREAM, or above its GOAWAY's last stream id):
    it did not process it."""

    reset_reason = "remote refused stream reset"
    refused = True


class UpstreamProtocolError(UpstreamError):
    """The upstream sent bytes that are not an HTTP/1.1 response: Envoy answers 502."""

    reset_reason = "protocol error"
    flag = "UPE"
    status = 502


class UpstreamUnexpectedUpgrade(UpstreamProtocolError):
    """A `101` the request did not ask for. Envoy passes it on to the client; podproxy answers
    503 instead (README, differences from Envoy): the bytes after it are not HTTP."""

    status = 503
