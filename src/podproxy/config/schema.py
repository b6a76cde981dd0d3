"""Typed, frozen models of the Envoy v3 Bootstrap subset podproxy supports.

Field names are exactly Envoy's (api/envoy/.../v3/*.proto). Durations are float seconds, enums
are `Enum`s, defaults are filled in. Each model lists in `UNSUPPORTED` the real Envoy fields of
its proto that podproxy does not implement yet, so the loader can tell them apart from typos.
Models only check what one message can see; checks across messages live in `config.loader`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

TYPE_URL_PREFIX = "type.googleapis.com/"
HCM_TYPE = TYPE_URL_PREFIX + (
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.router.v3.Router"
FAULT_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.fault.v3.HTTPFault"
BUFFER_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.buffer.v3.Buffer"
BUFFER_PER_ROUTE_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
CORS_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.cors.v3.CorsPolicy"
HEALTH_CHECK_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.health_check.v3.HealthCheck"
LOCAL_RATELIMIT_TYPE = TYPE_URL_PREFIX + (
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
)
GRPC_WEB_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
GRPC_HTTP1_BRIDGE_TYPE = TYPE_URL_PREFIX + (
    "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"
)
GRPC_STATS_TYPE = TYPE_URL_PREFIX + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
ROUTE_FILTER_CONFIG_TYPE = TYPE_URL_PREFIX + "envoy.config.route.v3.FilterConfig"
FILE_ACCESS_LOG_TYPE = TYPE_URL_PREFIX + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_ACCESS_LOG_TYPE = (
    TYPE_URL_PREFIX + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
)
STDERR_ACCESS_LOG_TYPE = (
    TYPE_URL_PREFIX + "envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
)
DNS_CLUSTER_TYPE = TYPE_URL_PREFIX + "envoy.extensions.clusters.dns.v3.DnsCluster"
CARES_TYPE = (
    TYPE_URL_PREFIX + "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
)

# Cluster.cluster_type names of the DNS cluster extension (both spellings exist in Envoy 1.40).
DNS_CLUSTER_NAMES = frozenset({"envoy.cluster.dns", "envoy.clusters.dns"})


def show(value: object) -> str:
    """A config value as the user wrote it, for error messages."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


# --- scalar types -------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^(-?)(\d+)(?:\.(\d{1,9}))?s$")
# google.protobuf.Duration range: +-315,576,000,000 seconds.
_MAX_DURATION_S = 315_576_000_000


def _duration_error(value: object) -> PydanticCustomError:
    return PydanticCustomError(
        "duration", 'expected a duration like "0.25s", got {got}', {"got": show(value)}
    )


def parse_duration(value: object) -> float:
    """Proto JSON Duration (`"0.25s"` or `{seconds, nanos}`) to float seconds; never negative."""
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            raise _duration_error(value)
        seconds = int(m.group(2)) + int((m.group(3) or "0").ljust(9, "0")) / 1e9
        negative = m.group(1) == "-" and seconds != 0
    elif isinstance(value, dict):
        if not set(value) <= {"seconds", "nanos"}:
            raise _duration_error(value)
        secs, nanos = value.get("seconds", 0), value.get("nanos", 0)
        if isinstance(secs, str) and re.fullmatch(r"-?\d+", secs):
            secs = int(secs)  # proto JSON writes int64 as strings
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (secs, nanos)):
            raise _duration_error(value)
        if not -999_999_999 <= nanos <= 999_999_999:
            raise _duration_error(value)
        seconds = secs + nanos / 1e9
        negative = seconds < 0
    else:
        raise _duration_error(value)
    if negative:
        raise PydanticCustomError(
            "duration", "expected a non-negative duration, got {got}", {"got": show(value)}
        )
    if seconds > _MAX_DURATION_S:
        raise PydanticCustomError(
            "duration", "duration out of range, got {got}", {"got": show(value)}
        )
    return seconds


def format_duration(seconds: float) -> str:
    """Float seconds to the proto JSON form that `parse_duration` reads back."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"not a duration: {seconds!r}")
    nanos = round(seconds * 1e9)
    whole, frac = divmod(nanos, 1_000_000_000)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".") + "s"


def _duration_zero_none(value: object) -> float | None:
    # Envoy fields where 0 means "disabled" (stream_idle_timeout, route timeout, idle_timeout).
    if value is None:
        return None
    seconds = parse_duration(value)
    return None if seconds == 0 else seconds


def _duration_or_none(value: object) -> float | None:
    return None if value is None else parse_duration(value)


def _uint(value: object) -> int:
    # proto JSON accepts integers and decimal strings; YAML booleans and floats are mistakes.
    if isinstance(value, str) and re.fullmatch(r"\d+", value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise PydanticCustomError(
        "uint", "expected a non-negative integer, got {got}", {"got": show(value)}
    )


def _int64(value: object) -> int:
    # proto JSON writes int64 as a decimal string or a number.
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    raise PydanticCustomError("int64", "expected a 64-bit integer, got {got}", {"got": show(value)})


def _str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise PydanticCustomError("string", "expected a string, got {got}", {"got": show(value)})


Duration = Annotated[float, BeforeValidator(parse_duration)]
OptDuration = Annotated[float | None, BeforeValidator(_duration_or_none)]
ZeroDisables = Annotated[float | None, BeforeValidator(_duration_zero_none)]
UInt = Annotated[int, BeforeValidator(_uint)]
Int64 = Annotated[int, BeforeValidator(_int64)]
Str = Annotated[str, BeforeValidator(_str)]

E = TypeVar("E", bound=Enum)


def enum_name(value: object) -> object:
    """An enum value name as Envoy reads it: any ASCII case (`strict_dns`, `Strict_Dns`).

    Envoy parses configs with protobuf's `case_insensitive_enum_parsing` (MessageUtil::
    loadFromJsonNoThrow), which matches names with `absl::EqualsIgnoreCase`: ASCII letters
    only, so non-ASCII text (which `str.upper` might map onto a name) is left to be rejected.
    """
    if isinstance(value, str) and value.isascii():
        return value.upper()
    return value


def _enum_parser(enum: type[E]) -> Callable[[object], E]:
    def parse(value: object) -> E:
        if isinstance(value, enum):
            return value
        name = enum_name(value)
        if isinstance(name, str) and name in enum.__members__:
            return enum[name]
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return enum(value)
            except ValueError:
                pass
        raise PydanticCustomError(
            "enum",
            "expected one of {names}, got {got}",
            {"names": ", ".join(enum.__members__), "got": show(value)},
        )

    return parse


def _unsupported_value(value: Enum) -> PydanticCustomError:
    return PydanticCustomError(
        "unsupported", "{name}: Envoy value not supported by podproxy yet", {"name": value.name}
    )


class CodecType(Enum):
    AUTO = 0
    HTTP1 = 1
    HTTP2 = 2
    HTTP3 = 3


class ServerHeaderTransformation(Enum):
    OVERWRITE = 0
    APPEND_IF_ABSENT = 1
    PASS_THROUGH = 2


class DiscoveryType(Enum):
    STATIC = 0
    STRICT_DNS = 1
    LOGICAL_DNS = 2
    EDS = 3
    ORIGINAL_DST = 4


class LbPolicy(Enum):
    ROUND_ROBIN = 0
    LEAST_REQUEST = 1
    RING_HASH = 2
    RANDOM = 3
    MAGLEV = 5
    CLUSTER_PROVIDED = 6
    LOAD_BALANCING_POLICY_CONFIG = 7


class DnsLookupFamily(Enum):
    AUTO = 0
    V4_ONLY = 1
    V6_ONLY = 2
    V4_PREFERRED = 3
    ALL = 4


class HealthStatus(Enum):
    UNKNOWN = 0
    HEALTHY = 1
    UNHEALTHY = 2
    DRAINING = 3
    TIMEOUT = 4
    DEGRADED = 5


class ClusterNotFoundResponseCode(Enum):
    SERVICE_UNAVAILABLE = 0
    NOT_FOUND = 1
    INTERNAL_SERVER_ERROR = 2


class TrafficDirection(Enum):
    UNSPECIFIED = 0
    INBOUND = 1
    OUTBOUND = 2


class FaultDelayType(Enum):
    """v2 FaultDelay.type (removed in v3, where every delay is fixed)."""

    FIXED = 0


class DenominatorType(Enum):
    """envoy.type.v3.FractionalPercent.DenominatorType, as the denominator's value."""

    HUNDRED = 100
    TEN_THOUSAND = 10_000
    MILLION = 1_000_000


class HeaderAppendAction(Enum):
    """core.v3.HeaderValueOption.HeaderAppendAction."""

    APPEND_IF_EXISTS_OR_ADD = 0
    ADD_IF_ABSENT = 1
    OVERWRITE_IF_EXISTS_OR_ADD = 2
    OVERWRITE_IF_EXISTS = 3


class ProtocolSelection(Enum):
    """Cluster.ClusterProtocolSelection (deprecated `protocol_selection`)."""

    USE_CONFIGURED_PROTOCOL = 0
    USE_DOWNSTREAM_PROTOCOL = 1


class RedirectResponseCode(Enum):
    """route.v3.RedirectAction.RedirectResponseCode, with the status each name stands for."""

    MOVED_PERMANENTLY = 0
    FOUND = 1
    SEE_OTHER = 2
    TEMPORARY_REDIRECT = 3
    PERMANENT_REDIRECT = 4

    @property
    def status(self) -> int:
        return (301, 302, 303, 307, 308)[self.value]


CodecTypeField = Annotated[CodecType, BeforeValidator(_enum_parser(CodecType))]
ServerHeaderTransformationField = Annotated[
    ServerHeaderTransformation, BeforeValidator(_enum_parser(ServerHeaderTransformation))
]
DiscoveryTypeField = Annotated[DiscoveryType, BeforeValidator(_enum_parser(DiscoveryType))]
LbPolicyField = Annotated[LbPolicy, BeforeValidator(_enum_parser(LbPolicy))]
DnsLookupFamilyField = Annotated[DnsLookupFamily, BeforeValidator(_enum_parser(DnsLookupFamily))]
HealthStatusField = Annotated[HealthStatus, BeforeValidator(_enum_parser(HealthStatus))]
ClusterNotFoundResponseCodeField = Annotated[
    ClusterNotFoundResponseCode, BeforeValidator(_enum_parser(ClusterNotFoundResponseCode))
]
TrafficDirectionField = Annotated[TrafficDirection, BeforeValidator(_enum_parser(TrafficDirection))]
FaultDelayTypeField = Annotated[FaultDelayType, BeforeValidator(_enum_parser(FaultDelayType))]
ProtocolSelectionField = Annotated[
    ProtocolSelection, BeforeValidator(_enum_parser(ProtocolSelection))
]
DenominatorTypeField = Annotated[DenominatorType, BeforeValidator(_enum_parser(DenominatorType))]
HeaderAppendActionField = Annotated[
    HeaderAppendAction, BeforeValidator(_enum_parser(HeaderAppendAction))
]
RedirectResponseCodeField = Annotated[
    RedirectResponseCode, BeforeValidator(_enum_parser(RedirectResponseCode))
]


# --- messages -------------------------------------------------------------------------------


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Unsupported fields that only tune something podproxy does not have at all: the error says
# what (model name, field) -> why, so nobody waits for a field that can never do anything here.
_NO_TRACER = "it tunes tracing, and podproxy has no tracer"
UNSUPPORTED_WHY: dict[tuple[str, str], str] = {
    ("Route", "decorator"): "it names the spans of a tracer, and podproxy has no tracer",
    ("Route", "tracing"): _NO_TRACER,
    ("HttpConnectionManager", "tracing"): _NO_TRACER,
    ("Router", "start_child_span"): _NO_TRACER,
    ("Bootstrap", "tracing"): "it configures a tracer, and podproxy has no tracing",
}


def _base64_bytes(value: str | None) -> str | None:
    """A config field of base64 bytes (Envoy's proto `bytes` in YAML): checked, kept as text."""
    if value is not None:
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            raise PydanticCustomError(
                "base64", "expected base64 bytes, got {got}", {"got": show(value)}
            ) from None
    return value


class Message(BaseModel):
    """Base of every config model: frozen, no extra keys, Envoy's field names."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)
    UNSUPPORTED: ClassVar[frozenset[str]] = frozenset()


def _one_of(model: BaseModel, names: tuple[str, ...], required: bool = True) -> None:
    present = [n for n in names if getattr(model, n) is not None]
    if len(present) > 1 or (required and not present):
        want = "exactly one" if required else "at most one"
        raise ValueError(f"{want} of {', '.join(names)} must be set, got {len(present)}")


class TypedMessage(Message):
    """A message that may appear inside an `Any` (`typed_config`): accepts its `@type`."""

    TYPE_URL: ClassVar[str] = ""
    type_url: str | None = Field(default=None, alias="@type")

    @field_validator("type_url")
    @classmethod
    def _check_type(cls, value: str | None) -> str | None:
        if value is not None and value != cls.TYPE_URL:
            raise PydanticCustomError(
                "type_url",
                "{got}: Envoy type not supported here by podproxy yet (expected {want})",
                {"got": value, "want": cls.TYPE_URL},
            )
        return value


class SocketAddress(Message):
    UNSUPPORTED = _names("named_port network_namespace_filepath ipv4_compat")
    address: Str
    port_value: Annotated[UInt, Field(le=65535)] = 0
    protocol: Str = "TCP"
    resolver_name: Str | None = None

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: object) -> object:
        name = enum_name(value)
        if isinstance(value, bool):
            pass
        elif name in (0, "TCP"):
            return "TCP"
        elif name in (1, "UDP"):
            raise PydanticCustomError(
                "unsupported", "UDP: Envoy value not supported by podproxy yet"
            )
        raise PydanticCustomError(
            "enum", "expected one of TCP, UDP, got {got}", {"got": show(value)}
        )


class Address(Message):
    UNSUPPORTED = _names("pipe envoy_internal_address")
    socket_address: SocketAddress


def _struct(value: object) -> dict[str, object]:
    # google.protobuf.Struct: a mapping with string keys (values are checked by the formatter,
    # which names the operator or value it refuses).
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return value
    raise PydanticCustomError("struct", "expected a mapping, got {got}", {"got": show(value)})


Struct = Annotated[dict[str, object], BeforeValidator(_struct)]


class SubstitutionFormatString(Message):
    """config/core/v3/substitution_format_string.proto: an access log's `log_format`."""

    UNSUPPORTED = _names("formatters json_format_options")
    text_format: Str | None = None
    json_format: Struct | None = None
    text_format_source: DataSource | None = None
    omit_empty_values: StrictBool = False
    # Used by Envoy only where the same message formats a local-reply body; an access log
    # line has no content type, in Envoy either.
    content_type: Str | None = None

    @model_validator(mode="after")
    def _one(self) -> SubstitutionFormatString:
        _one_of(self, ("text_format", "json_format", "text_format_source"))
        if self.text_format_source is not None and self.text_format_source.inline_bytes:
            raise ValueError("text_format_source: inline_bytes is not a text format")
        return self


_ACCESS_LOG_TYPES = {
    FILE_ACCESS_LOG_TYPE: "FileAccessLog",
    STDOUT_ACCESS_LOG_TYPE: "StdoutAccessLog",
    STDERR_ACCESS_LOG_TYPE: "StderrAccessLog",
}
_FILE_ONLY = ("path", "format", "json_format", "typed_json_format")


class AccessLogConfig(TypedMessage):
    """An access logger's typed_config: FileAccessLog (extensions/access_loggers/file/v3) or
    StdoutAccessLog / StderrAccessLog (.../stream/v3), told apart by `@type` (no `@type`:
    FileAccessLog). One model for the three, so every error keeps its YAML path."""

    TYPE_URL = FILE_ACCESS_LOG_TYPE
    path: Str | None = None
    # FileAccessLog's format oneof: `format` (v2 string), `json_format` (v2 Struct; Envoy
    # 1.40 prints it typed, as typed_json_format), `typed_json_format`, `log_format`.
    format: Str | None = None
    json_format: Struct | None = None
    typed_json_format: Struct | None = None
    log_format: SubstitutionFormatString | None = None

    @field_validator("type_url")
    @classmethod
    def _check_type(cls, value: str | None) -> str | None:
        if value is not None and value not in _ACCESS_LOG_TYPES:
            raise PydanticCustomError(
                "type_url",
                "{got}: Envoy access logger not supported by podproxy yet (expected one of {want})",
                {"got": value, "want": ", ".join(_ACCESS_LOG_TYPES)},
            )
        return value

    @property
    def kind(self) -> str:
        """`FileAccessLog`, `StdoutAccessLog` or `StderrAccessLog`."""
        return _ACCESS_LOG_TYPES[self.type_url or FILE_ACCESS_LOG_TYPE]

    @model_validator(mode="after")
    def _fields(self) -> AccessLogConfig:
        kind = self.kind
        if kind != "FileAccessLog":
            for name in _FILE_ONLY:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: not a field of {kind}")
            return self
        if not self.path:
            raise ValueError("path: missing required field")
        _one_of(self, ("format", "json_format", "typed_json_format", "log_format"), False)
        return self


class ComparisonOp(Enum):
    EQ = 0
    GE = 1
    LE = 2
    NE = 3


class RuntimeUInt32(Message):
    default_value: Annotated[UInt, Field(le=4294967295)] = 0
    # With no runtime overrides (podproxy has none yet) the default_value applies, as in an
    # Envoy whose runtime does not set the key.
    runtime_key: Str = ""


class ComparisonFilter(Message):
    op: Annotated[ComparisonOp, BeforeValidator(_enum_parser(ComparisonOp))] = ComparisonOp.EQ
    value: RuntimeUInt32


class StatusCodeFilter(Message):
    comparison: ComparisonFilter


class DurationFilter(Message):
    comparison: ComparisonFilter


class NotHealthCheckFilter(Message):
    pass


class FractionalPercent(Message):
    """envoy.type.v3.FractionalPercent: numerator / denominator (a numerator above the
    denominator means always, as Envoy's ProbabilityUtil reads it)."""

    numerator: UInt = 0
    denominator: DenominatorTypeField = DenominatorType.HUNDRED


class RuntimeFilter(Message):
    runtime_key: Annotated[Str, Field(min_length=1)]
    percent_sampled: FractionalPercent | None = None
    use_independent_randomness: StrictBool = False


class AndFilter(Message):
    filters: Annotated[tuple[AccessLogFilter, ...], Field(min_length=2)]


class OrFilter(Message):
    filters: Annotated[tuple[AccessLogFilter, ...], Field(min_length=2)]


class HeaderFilter(Message):
    header: PseudoHeaderMatcher


# ResponseFlagFilter.flags: the values Envoy 1.40 accepts (accesslog.proto `in` rule).
RESPONSE_FLAG_NAMES = _names(
    """
    LH UH UT LR UR UF UC UO NR DI FI RL UAEX RLSE DC URX SI IH DPE UMSDR RFCF NFCF DT UPE NC
    OM DF DO DR UDO
    """
)


def _response_flag(value: object) -> str:
    if isinstance(value, str) and value in RESPONSE_FLAG_NAMES:
        return value
    raise PydanticCustomError(
        "enum", "expected a response flag like UH or UF, got {got}", {"got": show(value)}
    )


class ResponseFlagFilter(Message):
    flags: tuple[Annotated[str, BeforeValidator(_response_flag)], ...] = ()


class GrpcStatus(Enum):
    OK = 0
    CANCELED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GrpcStatusFilter(Message):
    statuses: tuple[Annotated[GrpcStatus, BeforeValidator(_enum_parser(GrpcStatus))], ...] = ()
    exclude: StrictBool = False


class AccessLogFilter(Message):
    """config/accesslog/v3/accesslog.proto AccessLogFilter: exactly one filter."""

    UNSUPPORTED = _names("traceable_filter metadata_filter log_type_filter extension_filter")
    status_code_filter: StatusCodeFilter | None = None
    duration_filter: DurationFilter | None = None
    not_health_check_filter: NotHealthCheckFilter | None = None
    runtime_filter: RuntimeFilter | None = None
    and_filter: AndFilter | None = None
    or_filter: OrFilter | None = None
    header_filter: HeaderFilter | None = None
    response_flag_filter: ResponseFlagFilter | None = None
    grpc_status_filter: GrpcStatusFilter | None = None

    @model_validator(mode="after")
    def _one(self) -> AccessLogFilter:
        _one_of(self, tuple(type(self).model_fields))
        return self


class AccessLog(Message):
    name: Str = "envoy.access_loggers.file"
    filter: AccessLogFilter | None = None
    typed_config: AccessLogConfig


class Admin(Message):
    UNSUPPORTED = _names("profile_path socket_options ignore_global_conn_limit allow_paths")
    address: Address
    access_log_path: Str | None = None
    access_log: tuple[AccessLog, ...] = ()

    def access_log_paths(self) -> tuple[str, ...]:
        """Every file the admin access log goes to: `access_log_path` then each file logger."""
        head = (self.access_log_path,) if self.access_log_path else ()
        return head + tuple(
            log.typed_config.path
            for log in self.access_log
            if log.typed_config.kind == "FileAccessLog" and log.typed_config.path
        )


class HttpProtocolOptions(Message):
    """core.v3.HttpProtocolOptions as a cluster reads it (its common_http_protocol_options)."""

    UNSUPPORTED = _names(
        """
        headers_with_underscores_action max_requests_per_connection max_stream_duration
        """
    )
    idle_timeout: ZeroDisables = 3600.0
    max_headers_count: Annotated[UInt, Field(ge=1)] = 100
    max_connection_duration: ZeroDisables = None
    # Limits the response heads a cluster accepts (Envoy: 80 KiB when unset); a cluster field.
    max_response_headers_kb: Annotated[UInt, Field(ge=1, le=8192)] | None = None


class DownstreamHttpProtocolOptions(HttpProtocolOptions):
    """The same message as the HTTP connection manager reads it: the downstream stream's
    `max_stream_duration` runs here (a cluster's, the upstream one, does not yet)."""

    UNSUPPORTED = _names("headers_with_underscores_action max_requests_per_connection")
    # Envoy: a downstream stream older than this is answered 408 (request not complete), 504
    # (no response yet) or reset; 0 or unset disables it.
    max_stream_duration: ZeroDisables = None


class SchemeHeaderTransformation(Message):
    """core.v3.SchemeHeaderTransformation (HCM `scheme_header_transformation`)."""

    scheme_to_overwrite: Str | None = None
    match_upstream: StrictBool = False

    @field_validator("scheme_to_overwrite")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        # protocol.proto: string = {in: "http" in: "https"}, compared exactly.
        if value is not None and value not in ("http", "https"):
            raise PydanticCustomError(
                "enum", 'expected "http" or "https", got {got}', {"got": show(value)}
            )
        return value


class Http1ProtocolOptions(Message):
    UNSUPPORTED = _names(
        """
        allow_absolute_url header_key_format enable_trailers allow_chunked_length
        override_stream_error_on_invalid_http_message send_fully_qualified_url
        use_balsa_parser allow_custom_methods ignore_http_11_upgrade
        """
    )
    accept_http_10: StrictBool = False
    default_host_for_http_10: Str | None = None


class Percent(Message):
    """envoy.type.v3.Percent: a percentage, 0 to 100."""

    value: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0


class KeepaliveSettings(Message):
    """core.v3.KeepaliveSettings (Http2ProtocolOptions.connection_keepalive): a PING every
    `interval` (plus up to `interval_jitter` percent of it; unset: no PINGs), and the
    connection closed when its ack has not come `timeout` after it (nor any other frame)."""

    UNSUPPORTED = _names("connection_idle_interval")
    interval: OptDuration = None
    timeout: Duration
    interval_jitter: Percent = Percent(value=15.0)

    @field_validator("interval", "timeout")
    @classmethod
    def _at_least_1ms(cls, value: float | None) -> float | None:
        # Envoy's validate rule on both: gte 1ms.
        if value is not None and value < 0.001:
            raise PydanticCustomError(
                "duration", "expected at least 1ms, got {got}s", {"got": value}
            )
        return value


class Http2ProtocolOptions(Message):
    """core.v3.Http2ProtocolOptions (HCM and cluster `http2_protocol_options`), with Envoy's
    current defaults (reference/envoy-hcm.md §5.2)."""

    UNSUPPORTED = _names(
        """
        allow_connect allow_metadata max_metadata_size custom_settings_parameters
        use_oghttp2_codec enable_huffman_encoding
        max_consecutive_inbound_frames_with_empty_payload max_inbound_priority_frames_per_stream
        max_inbound_window_update_frames_per_data_frame_sent
        """
    )
    hpack_table_size: Annotated[UInt, Field(le=4294967295)] = 4096
    max_concurrent_streams: Annotated[UInt, Field(ge=1, le=2147483647)] = 1024
    initial_stream_window_size: Annotated[UInt, Field(ge=65535, le=2147483647)] = 16777216
    initial_connection_window_size: Annotated[UInt, Field(ge=65535, le=2147483647)] = 25165824
    max_outbound_frames: Annotated[UInt, Field(ge=1)] = 10000
    max_outbound_control_frames: Annotated[UInt, Field(ge=1)] = 1000
    connection_keepalive: KeepaliveSettings | None = None
    # h2 (the HTTP/2 library) treats every invalid message as a connection error, which is
    # Envoy's default; resetting only the stream is not available.
    stream_error_on_invalid_http_messaging: StrictBool = False
    override_stream_error_on_invalid_http_message: StrictBool | None = None

    @field_validator("stream_error_on_invalid_http_messaging")
    @classmethod
    def _stream_error(cls, value: bool) -> bool:
        if value:
            raise PydanticCustomError(
                "unsupported",
                "true: resetting only the stream on an invalid HTTP/2 message is not "
                "supported by podproxy yet (the connection is closed, Envoy's default)",
            )
        return value

    @field_validator("override_stream_error_on_invalid_http_message")
    @classmethod
    def _override(cls, value: bool | None) -> bool | None:
        return None if value is None else cls._stream_error(value)


class ExplicitHttpConfig(Message):
    """HttpProtocolOptions.explicit_http_config: exactly one protocol."""

    UNSUPPORTED = _names("http3_protocol_options")
    http_protocol_options: Http1ProtocolOptions | None = None
    http2_protocol_options: Http2ProtocolOptions | None = None

    @model_validator(mode="after")
    def _one(self) -> ExplicitHttpConfig:
        if (self.http_protocol_options is None) == (self.http2_protocol_options is None):
            raise ValueError(
                "explicit_http_config: exactly one of http_protocol_options and "
                "http2_protocol_options"
            )
        return self


class UseDownstreamHttpConfig(Message):
    """HttpProtocolOptions.use_downstream_protocol_config: the client's protocol upstream."""

    UNSUPPORTED = _names("http3_protocol_options")
    http_protocol_options: Http1ProtocolOptions | None = None
    http2_protocol_options: Http2ProtocolOptions | None = None


# validate.proto's well-known HTTP_HEADER_NAME (Envoy's check on override_auto_sni_header).
_HTTP_HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+-.^_|~`]+$")


class CoreUpstreamHttpProtocolOptions(Message):
    """core.v3.UpstreamHttpProtocolOptions: a cluster's per-request upstream SNI and SAN check
    (the deprecated Cluster.upstream_http_protocol_options, or the typed extension's field of
    that name). Named apart from the extension message, which podproxy calls
    UpstreamHttpProtocolOptions."""

    # SNI of each new connection from the request's Host (after the route's host rewrite) or
    # the override header, without the port; none for an IP address.
    auto_sni: StrictBool = False
    # Check the pod certificate's SANs against that same name.
    auto_san_validation: StrictBool = False
    override_auto_sni_header: Str = ""

    @field_validator("override_auto_sni_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if value and not _HTTP_HEADER_NAME.match(value):
            raise PydanticCustomError(
                "header_name",
                "value does not match regex pattern {want}, got {got}",
                {"want": show(_HTTP_HEADER_NAME.pattern), "got": show(value)},
            )
        return value

    @property
    def active(self) -> bool:
        """Envoy's router reads the options only when one of the two is on."""
        return self.auto_sni or self.auto_san_validation


class UpstreamHttpProtocolOptions(TypedMessage):
    """extensions.upstreams.http.v3.HttpProtocolOptions, a cluster's
    `typed_extension_protocol_options` entry: which protocol its pools speak."""

    TYPE_URL = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    UNSUPPORTED = _names(
        """
        auto_config http_filters header_validation_config
        outlier_detection hash_policy retry_policy request_mirror_policies
        """
    )
    common_http_protocol_options: HttpProtocolOptions | None = None
    upstream_http_protocol_options: CoreUpstreamHttpProtocolOptions | None = None
    explicit_http_config: ExplicitHttpConfig | None = None
    use_downstream_protocol_config: UseDownstreamHttpConfig | None = None

    @model_validator(mode="after")
    def _one(self) -> UpstreamHttpProtocolOptions:
        if (self.explicit_http_config is None) == (self.use_downstream_protocol_config is None):
            raise ValueError(
                "exactly one of explicit_http_config and use_downstream_protocol_config "
                "(auto_config is not supported by podproxy yet)"
            )
        return self


UPSTREAM_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class GoogleRE2(Message):
    """RegexMatcher.google_re2: the engine every regex uses (the only one, so `{}` says
    nothing new). Its max_program_size (deprecated) bounds RE2's compiled program, which
    Python's regex engine does not have."""

    UNSUPPORTED = _names("max_program_size")


class RegexMatcher(Message):
    regex: Str
    google_re2: GoogleRE2 | None = None

    @field_validator("regex")
    @classmethod
    def _compile(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise PydanticCustomError(
                "regex", "invalid regex {got}: {err}", {"got": show(value), "err": str(exc)}
            ) from None
        return value


class StringMatcher(Message):
    UNSUPPORTED = _names("custom")
    exact: Str | None = None
    prefix: Str | None = None
    suffix: Str | None = None
    contains: Str | None = None
    safe_regex: RegexMatcher | None = None
    ignore_case: StrictBool = False

    @model_validator(mode="after")
    def _one(self) -> StringMatcher:
        _one_of(self, ("exact", "prefix", "suffix", "contains", "safe_regex"))
        return self


class Int64Range(Message):
    """type.v3.Int64Range: [start, end)."""

    start: Int64 = 0
    end: Int64 = 0


class HeaderMatcher(Message):
    name: Annotated[Str, Field(min_length=1)]
    exact_match: Str | None = None
    prefix_match: Str | None = None
    suffix_match: Str | None = None
    contains_match: Str | None = None
    safe_regex_match: RegexMatcher | None = None
    range_match: Int64Range | None = None
    present_match: StrictBool | None = None
    string_match: StringMatcher | None = None
    invert_match: StrictBool = False
    treat_missing_header_as_empty: StrictBool = False

    @field_validator("name")
    @classmethod
    def _pseudo(cls, value: str) -> str:
        # Envoy matches `:method`, `:path` and `:scheme` too; podproxy's matchers see the
        # header fields and the authority (`host` and `:authority` are the same to Envoy).
        if value.startswith(":") and value.lower() != ":authority":
            raise PydanticCustomError(
                "unsupported",
                "{got}: matching a pseudo-header other than :authority is not supported by "
                "podproxy yet",
                {"got": show(value)},
            )
        return value

    @model_validator(mode="after")
    def _one(self) -> HeaderMatcher:
        _one_of(
            self,
            (
                "exact_match",
                "prefix_match",
                "suffix_match",
                "contains_match",
                "safe_regex_match",
                "range_match",
                "present_match",
                "string_match",
            ),
            required=False,
        )
        return self


class QueryParameterMatcher(Message):
    """route.v3.QueryParameterMatcher: the first value of `name` in the query string."""

    name: Annotated[Str, Field(min_length=1, max_length=1024)]
    string_match: StringMatcher | None = None
    present_match: StrictBool | None = None

    @model_validator(mode="after")
    def _one(self) -> QueryParameterMatcher:
        _one_of(self, ("string_match", "present_match"), required=False)
        return self


class RuntimeFractionalPercent(Message):
    """core.v3.RuntimeFractionalPercent: `default_value` unless the runtime has `runtime_key`."""

    default_value: FractionalPercent
    runtime_key: Str = ""


def _cors_header_value(value: object) -> str:
    # The text goes out as a response header value: no CR, LF or NUL. (Envoy 1.40's config
    # check lets them through; podproxy refuses them rather than split a response.)
    text = _str(value)
    if any(c in text for c in "\r\n\0"):
        raise PydanticCustomError(
            "header_value",
            "expected a header value (no CR, LF or NUL), got {got}",
            {"got": show(value)},
        )
    return text


CorsHeaderValue = Annotated[str, BeforeValidator(_cors_header_value)]


class RouteCorsPolicy(Message):
    """route.v3.CorsPolicy: the deprecated `cors` of a virtual host or route action. Envoy 1.40
    still reads it (with a deprecation warning), but only when no typed_per_filter_config of
    the route holds a policy; v2's allow_origin, allow_origin_regex and enabled are rewritten
    into these fields by normalize.py."""

    # Any matcher that matches the origin allows it; one that matches "*" allows every origin.
    allow_origin_string_match: tuple[StringMatcher, ...] = ()
    # Empty strings are unset: a less specific policy's value is used then.
    allow_methods: CorsHeaderValue = ""
    allow_headers: CorsHeaderValue = ""
    expose_headers: CorsHeaderValue = ""
    max_age: CorsHeaderValue = ""
    allow_credentials: StrictBool | None = None
    # Unset: enabled for every request; shadow_enabled unset: off.
    filter_enabled: RuntimeFractionalPercent | None = None
    shadow_enabled: RuntimeFractionalPercent | None = None
    allow_private_network_access: StrictBool | None = None
    # Unset: true (a preflight from an origin not allowed goes upstream).
    forward_not_matching_preflights: StrictBool | None = None


class CorsPolicy(TypedMessage, RouteCorsPolicy):
    """envoy.extensions.filters.http.cors.v3.CorsPolicy: the CORS filter's per-route config
    (typed_per_filter_config of a virtual host or route), the same fields as the route's."""

    TYPE_URL = CORS_POLICY_TYPE


class PseudoHeaderMatcher(HeaderMatcher):
    """A HeaderMatcher that may also name `:path` and `:method` (a health check filter's, an
    access log header_filter's: `{name: ":path", exact_match: /healthz}`); route matching
    takes only :authority among the pseudo-headers so far."""

    @field_validator("name")
    @classmethod
    def _pseudo(cls, value: str) -> str:
        if value.startswith(":") and value.lower() not in (":authority", ":path", ":method"):
            raise PydanticCustomError(
                "unsupported",
                "{got}: matching :path, :method and :authority is supported here; other "
                "pseudo-headers are not supported by podproxy yet",
                {"got": show(value)},
            )
        return value


class GrpcRouteMatchOptions(Message):
    """`match.grpc: {}`: the route matches gRPC requests only (an empty message in v3)."""


class RouteMatch(Message):
    UNSUPPORTED = _names(
        """
        connect_matcher path_separated_prefix path_match_policy
        cookies tls_context dynamic_metadata filter_state
        """
    )
    prefix: Str | None = None
    path: Str | None = None
    safe_regex: RegexMatcher | None = None
    case_sensitive: StrictBool = True
    headers: tuple[HeaderMatcher, ...] = ()
    query_parameters: tuple[QueryParameterMatcher, ...] = ()
    runtime_fraction: RuntimeFractionalPercent | None = None
    grpc: GrpcRouteMatchOptions | None = None

    @model_validator(mode="after")
    def _one(self) -> RouteMatch:
        _one_of(self, ("prefix", "path", "safe_regex"))
        return self


# Envoy's HeaderParser: a value is a substitution format string; `%%` is a literal `%`.
_FORMAT_OPERATOR = re.compile(r"%%|%")


def literal_header_value(value: str) -> str:
    """A header value with `%%` unescaped, where podproxy does not format values (the local
    rate limit filter's): any other `%` is an error, never sent as literal text."""
    out: list[str] = []
    pos = 0
    for m in _FORMAT_OPERATOR.finditer(value):
        if m.group() == "%":
            raise PydanticCustomError(
                "unsupported",
                "{got}: %COMMAND% header values are not supported here by podproxy yet "
                "(route header mutations have them); write %% for a literal %",
                {"got": show(value)},
            )
        out.append(value[pos : m.start()] + "%")
        pos = m.end()
    out.append(value[pos:])
    return "".join(out)


def _modifiable(name: str, verb: str) -> PydanticCustomError | None:
    # HeaderUtility::isModifiableHeader: pseudo-headers and Host belong to the proxy.
    if name.startswith(":") or name.lower() == "host":
        return PydanticCustomError(
            "unsupported", ":-prefixed or host headers may not be {verb}", {"verb": verb}
        )
    return None


def _removable_names(value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not name:
            raise ValueError("a header name must not be empty")
        err = _modifiable(name, "removed")
        if err is not None:
            raise err
    return value


HeaderNames = Annotated[tuple[Str, ...], AfterValidator(_removable_names)]


class HeaderValue(Message):
    key: Annotated[Str, Field(min_length=1, max_length=16384)]
    value: Annotated[Str, Field(max_length=16384)] | None = None
    raw_value: Str | None = None

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        err = _modifiable(value, "modified")
        if err is not None:
            raise err
        return value

    @field_validator("value")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        # Envoy's HeaderParser: the value is a substitution format string, parsed at load.
        if value is not None and "%" in value:
            # Imported here: the formatter's package imports the route table, which imports
            # the stream model; none of it needs the schema at import time.
            from podproxy.access_log.formatter import FormatError
            from podproxy.router.header_format import header_value

            try:
                header_value(value)
            except FormatError as exc:
                raise ValueError(f"{show(value)}: {exc}") from None
        return value

    @field_validator("raw_value")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        return _base64_bytes(value)

    @model_validator(mode="after")
    def _one(self) -> HeaderValue:
        _one_of(self, ("value", "raw_value"), required=False)
        return self


class LiteralHeaderValue(HeaderValue):
    """A HeaderValue where podproxy does not format values yet: literal text only."""

    @field_validator("value")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        if value is not None:
            literal_header_value(value)
        return value

    def value_bytes(self) -> bytes:
        """The value to send: `value` with `%%` unescaped, or `raw_value` decoded."""
        if self.raw_value is not None:
            return literal_header_value(base64.b64decode(self.raw_value).decode("latin-1")).encode(
                "latin-1"
            )
        return literal_header_value(self.value or "").encode()


class HeaderValueOption(Message):
    header: HeaderValue
    # v2's `append` (deprecated in v3): true (the default) appends, false overwrites.
    append: StrictBool | None = None
    append_action: HeaderAppendActionField | None = None
    keep_empty_value: StrictBool = False

    @model_validator(mode="after")
    def _append(self) -> HeaderValueOption:
        if self.append is not None and self.append_action is not None:
            raise ValueError("Both append and append_action are set and it's not allowed")
        return self

    def action(self) -> HeaderAppendAction:
        if self.append_action is not None:
            return self.append_action
        if self.append is False:
            return HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
        return HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD


class LiteralHeaderValueOption(HeaderValueOption):
    """A HeaderValueOption whose value is literal (see `LiteralHeaderValue`)."""

    header: LiteralHeaderValue


class HeaderMutations(Message):
    """The four header-mutation fields Envoy has at each level (route configuration, virtual
    host, route, weighted cluster); not an Envoy message of its own."""

    request_headers_to_add: Annotated[tuple[HeaderValueOption, ...], Field(max_length=1000)] = ()
    request_headers_to_remove: HeaderNames = ()
    response_headers_to_add: Annotated[tuple[HeaderValueOption, ...], Field(max_length=1000)] = ()
    response_headers_to_remove: HeaderNames = ()


class ClusterWeight(HeaderMutations):
    UNSUPPORTED = _names("metadata_match")
    name: Str = ""
    cluster_header: Str = ""
    weight: UInt
    host_rewrite_literal: Str | None = None
    # The most specific level of per-filter config: over the route's and the virtual host's.
    typed_per_filter_config: dict[Str, PerFilterConfig] = {}  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _specifier(self) -> ClusterWeight:
        if self.name and self.cluster_header:
            raise ValueError("Only one of name or cluster_header can be specified")
        if not self.name and not self.cluster_header:
            raise ValueError("At least one of name or cluster_header need to be specified")
        return self


class WeightedCluster(Message):
    UNSUPPORTED = _names("header_name use_hash_policy")
    clusters: Annotated[tuple[ClusterWeight, ...], Field(min_length=1)]
    # Deprecated in v3: Envoy 1.40 accepts any value and uses the sum of the weights (checked
    # by running it), so podproxy does the same.
    total_weight: UInt | None = None
    runtime_key_prefix: Str = ""

    @field_validator("runtime_key_prefix")
    @classmethod
    def _no_runtime(cls, value: str) -> str:
        if value:
            raise PydanticCustomError(
                "unsupported",
                "{got}: weights from the runtime are not supported by podproxy yet",
                {"got": show(value)},
            )
        return value

    @model_validator(mode="after")
    def _total(self) -> WeightedCluster:
        total = sum(c.weight for c in self.clusters)
        if total == 0:
            raise ValueError("Sum of weights in the weighted_cluster must be greater than 0")
        if total > 4294967295:
            raise ValueError(
                "The sum of weights of all weighted clusters of route exceeds 4294967295"
            )
        return self


class MirrorHeaderMutation(Message):
    """config.common.mutation_rules.v3.HeaderMutation, as a mirror policy's
    `request_headers_mutations` entry: remove one header, or append one."""

    UNSUPPORTED = _names("remove_on_match")
    remove: Annotated[Str, Field(min_length=1)] | None = None
    # Literal values for now: a mirror's copy has no formatter context yet.
    append: LiteralHeaderValueOption | None = None

    @field_validator("remove")
    @classmethod
    def _removable(cls, value: str | None) -> str | None:
        if value is not None:
            err = _modifiable(value, "removed")
            if err is not None:
                raise err
        return value

    @model_validator(mode="after")
    def _one(self) -> MirrorHeaderMutation:
        _one_of(self, ("remove", "append"))
        return self


class RequestMirrorPolicy(Message):
    """route.v3.RouteAction.RequestMirrorPolicy (of a route, a virtual host or the route
    configuration; the most specific non-empty list wins). `trace_sampled` is accepted and
    has no effect: podproxy does no tracing."""

    cluster: Str = ""
    cluster_header: Str = ""
    runtime_fraction: RuntimeFractionalPercent | None = None
    trace_sampled: StrictBool | None = None
    disable_shadow_host_suffix_append: StrictBool = False
    request_headers_mutations: Annotated[
        tuple[MirrorHeaderMutation, ...], Field(max_length=1000)
    ] = ()
    host_rewrite_literal: Str = ""

    @model_validator(mode="after")
    def _cluster(self) -> RequestMirrorPolicy:
        # Envoy's ShadowPolicyImpl constructor, word for word.
        if self.cluster and self.cluster_header:
            raise ValueError(
                f"Only one of cluster '{self.cluster}' or cluster_header "
                f"'{self.cluster_header}' in request mirror policy can be specified"
            )
        if not self.cluster and not self.cluster_header:
            raise ValueError(
                "Exactly one of cluster or cluster_header in request mirror policy need to be "
                "specified"
            )
        return self


MirrorPolicies = tuple[RequestMirrorPolicy, ...]


class MaxStreamDuration(Message):
    """route.v3.RouteAction.MaxStreamDuration: the route's max_stream_duration replaces the
    connection manager's for the stream (0 turns it off); unset leaves the HCM's. With
    `grpc_timeout_header_max` a request's valid grpc-timeout decides its duration instead
    (capped by it, 0 = no cap, then less `grpc_timeout_header_offset`). Setting this message
    turns the route's `timeout` and legacy gRPC fields off (Envoy's usingNewTimeouts)."""

    max_stream_duration: OptDuration = None
    grpc_timeout_header_max: OptDuration = None
    grpc_timeout_header_offset: OptDuration = None


# The upgrade type of an HTTP/1.1 CONNECT request (Envoy treats CONNECT as an upgrade).
CONNECT_UPGRADE = "connect"


def _connect_unsupported() -> PydanticCustomError:
    return PydanticCustomError(
        "unsupported",
        "CONNECT: proxying CONNECT requests is not supported by podproxy yet (a CONNECT "
        "request is answered 404, as Envoy answers it without this upgrade type)",
    )


class RouteUpgradeConfig(Message):
    """route.v3.RouteAction.UpgradeConfig: turns one upgrade type on or off for the route,
    overriding the connection manager's `upgrade_configs` (on here is enough, even for a type
    the HCM does not list: Envoy's createUpgradeFilterChain, checked with Envoy 1.40)."""

    upgrade_type: Annotated[Str, Field(min_length=1)]
    enabled: StrictBool = True
    connect_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _connect(self) -> RouteUpgradeConfig:
        if self.upgrade_type.lower() == CONNECT_UPGRADE:
            raise _connect_unsupported()
        if self.connect_config is not None:
            # Envoy's RouteEntryImplBase, word for word.
            raise ValueError(f"Non-CONNECT upgrade type {self.upgrade_type} has ConnectConfig")
        return self


def _route_upgrades(value: tuple[RouteUpgradeConfig, ...]) -> tuple[RouteUpgradeConfig, ...]:
    seen: set[str] = set()
    for u in value:
        key = u.upgrade_type.lower()  # Envoy keys the route's upgrade map lower-cased
        if key in seen:
            raise ValueError(f"Duplicate upgrade {u.upgrade_type}")
        seen.add(key)
    return value


RouteUpgradeConfigs = Annotated[tuple[RouteUpgradeConfig, ...], AfterValidator(_route_upgrades)]


class RouteAction(Message):
    UNSUPPORTED = _names(
        """
        cluster_specifier_plugin inline_cluster_specifier_plugin metadata_match regex_rewrite
        path_rewrite_policy path_rewrite host_rewrite_header host_rewrite_path_regex
        append_x_forwarded_host
        flush_timeout early_data_policy retry_policy retry_policy_typed_config
        priority rate_limits include_vh_rate_limits hash_policy
        internal_redirect_policy
        internal_redirect_action max_internal_redirects hedge_policy
        """
    )
    cluster: Annotated[Str, Field(min_length=1)] | None = None
    cluster_header: Annotated[Str, Field(min_length=1)] | None = None
    weighted_clusters: WeightedCluster | None = None
    host_rewrite_literal: Str | None = None
    auto_host_rewrite: StrictBool = False
    prefix_rewrite: Str | None = None
    timeout: ZeroDisables = 15.0
    idle_timeout: ZeroDisables = None
    cluster_not_found_response_code: ClusterNotFoundResponseCodeField = (
        ClusterNotFoundResponseCode.SERVICE_UNAVAILABLE
    )
    cors: RouteCorsPolicy | None = None  # deprecated in v3; see RouteCorsPolicy
    request_mirror_policies: MirrorPolicies = ()
    max_stream_duration: MaxStreamDuration | None = None
    # Deprecated in v3 (still honoured by Envoy 1.40): for a gRPC request, the route timeout
    # is its grpc-timeout, capped at max_grpc_timeout (0 = no cap) after the offset.
    max_grpc_timeout: OptDuration = None
    grpc_timeout_offset: OptDuration = None
    upgrade_configs: RouteUpgradeConfigs = ()

    @model_validator(mode="after")
    def _host_rewrite(self) -> RouteAction:
        _one_of(self, ("cluster", "cluster_header", "weighted_clusters"))
        if self.host_rewrite_literal is not None and self.auto_host_rewrite:
            raise ValueError("at most one of host_rewrite_literal, auto_host_rewrite may be set")
        return self


class DataSource(Message):
    UNSUPPORTED = _names("watched_directory")
    filename: Str | None = None
    inline_bytes: Str | None = None
    inline_string: Str | None = None
    environment_variable: Annotated[Str, Field(min_length=1)] | None = None
    _data: bytes = PrivateAttr(b"")

    @field_validator("filename")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise PydanticCustomError("file", "cannot read file {got}", {"got": show(value)})
        return value

    @field_validator("inline_bytes")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        return _base64_bytes(value)

    @model_validator(mode="after")
    def _load(self) -> DataSource:
        _one_of(self, ("filename", "inline_bytes", "inline_string", "environment_variable"))
        if self.environment_variable is not None:
            # Read once at load, as Envoy's DataSource::read; a missing one is an error there.
            value = os.environ.get(self.environment_variable)
            if value is None:
                raise ValueError(f"Environment variable doesn't exist: {self.environment_variable}")
            self._data = value.encode()
        elif self.inline_string is not None:
            self._data = self.inline_string.encode()
        elif self.inline_bytes is not None:
            self._data = base64.b64decode(self.inline_bytes)
        elif self.filename is not None:
            try:
                with open(self.filename, "rb") as f:
                    self._data = f.read()
            except OSError as exc:
                raise ValueError(f"filename: cannot read {self.filename!r}: {exc}") from None
        return self

    def data(self) -> bytes:
        """The bytes this source holds (a file is read once, at load time)."""
        return self._data


class DirectResponseAction(Message):
    UNSUPPORTED = _names("body_format")
    status: Annotated[UInt, Field(ge=200, lt=600)]
    body: DataSource | None = None

    def body_bytes(self) -> bytes:
        return b"" if self.body is None else self.body.data()


class FaultDelay(Message):
    """envoy.extensions.filters.common.fault.v3.FaultDelay (v2: `type: FIXED` kept as is)."""

    type: FaultDelayTypeField | None = None
    fixed_delay: OptDuration = None
    header_delay: dict[str, Any] | None = None
    percentage: FractionalPercent = FractionalPercent()

    @model_validator(mode="after")
    def _one(self) -> FaultDelay:
        _one_of(self, ("fixed_delay", "header_delay"))
        if self.header_delay:
            raise ValueError("header_delay: takes no fields")
        return self


class FaultAbort(Message):
    """envoy.extensions.filters.http.fault.v3.FaultAbort: an HTTP status, a gRPC status (the
    reply is then HTTP 200, and a gRPC request gets it as grpc-status), or the request's own
    x-envoy-fault-abort-request / x-envoy-fault-abort-grpc-request headers."""

    http_status: Annotated[UInt, Field(ge=200, lt=600)] | None = None
    grpc_status: UInt | None = None
    header_abort: dict[str, Any] | None = None
    percentage: FractionalPercent = FractionalPercent()

    @model_validator(mode="after")
    def _one(self) -> FaultAbort:
        _one_of(self, ("http_status", "grpc_status", "header_abort"))
        if self.header_abort:
            raise ValueError("header_abort: takes no fields")
        return self


class HTTPFault(TypedMessage):
    """The fault filter (envoy.filters.http.fault), also as its per-route config."""

    TYPE_URL = FAULT_TYPE
    UNSUPPORTED = _names("response_rate_limit response_rate_limit_percent_runtime filter_metadata")
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    upstream_cluster: Str = ""
    headers: tuple[HeaderMatcher, ...] = ()
    downstream_nodes: tuple[Str, ...] = ()
    max_active_faults: UInt | None = None
    delay_percent_runtime: Str = "fault.http.delay.fixed_delay_percent"
    abort_percent_runtime: Str = "fault.http.abort.abort_percent"
    delay_duration_runtime: Str = "fault.http.delay.fixed_duration_ms"
    abort_http_status_runtime: Str = "fault.http.abort.http_status"
    max_active_faults_runtime: Str = "fault.http.max_active_faults"
    abort_grpc_status_runtime: Str = "fault.http.abort.grpc_status"
    disable_downstream_cluster_stats: StrictBool = False


class Buffer(TypedMessage):
    """The buffer filter (envoy.filters.http.buffer): the whole request before the router."""

    TYPE_URL = BUFFER_TYPE
    max_request_bytes: Annotated[UInt, Field(ge=1)]
    # v2's max_request_time was removed from Envoy (use the route timeout): not accepted.


class BufferPerRoute(TypedMessage):
    """The buffer filter's per-route config: off for the route, or another limit."""

    TYPE_URL = BUFFER_PER_ROUTE_TYPE
    disabled: StrictBool | None = None
    buffer: Buffer | None = None

    @model_validator(mode="after")
    def _one(self) -> BufferPerRoute:
        if (self.disabled is not None) == (self.buffer is not None):
            raise ValueError("exactly one of disabled, buffer must be set")
        if self.disabled is False:
            raise ValueError("disabled: must be true when set")
        return self


# envoy.type.v3.StatusCode: the HTTP statuses an HttpStatus may name (by number or name).
HTTP_STATUS_CODES: dict[str, int] = {
    name: int(code)
    for name, code in (
        pair.split("=")
        for pair in _names(
            """
        Continue=100 OK=200 Created=201 Accepted=202 NonAuthoritativeInformation=203
        NoContent=204 ResetContent=205 PartialContent=206 MultiStatus=207 AlreadyReported=208
        IMUsed=226 MultipleChoices=300 MovedPermanently=301 Found=302 SeeOther=303
        NotModified=304 UseProxy=305 TemporaryRedirect=307 PermanentRedirect=308
        BadRequest=400 Unauthorized=401 PaymentRequired=402 Forbidden=403 NotFound=404
        MethodNotAllowed=405 NotAcceptable=406 ProxyAuthenticationRequired=407
        RequestTimeout=408 Conflict=409 Gone=410 LengthRequired=411 PreconditionFailed=412
        PayloadTooLarge=413 URITooLong=414 UnsupportedMediaType=415 RangeNotSatisfiable=416
        ExpectationFailed=417 MisdirectedRequest=421 UnprocessableEntity=422 Locked=423
        FailedDependency=424 UpgradeRequired=426 PreconditionRequired=428 TooManyRequests=429
        RequestHeaderFieldsTooLarge=431 InternalServerError=500 NotImplemented=501
        BadGateway=502 ServiceUnavailable=503 GatewayTimeout=504 HTTPVersionNotSupported=505
        VariantAlsoNegotiates=506 InsufficientStorage=507 LoopDetected=508 NotExtended=510
        NetworkAuthenticationRequired=511
        """
        )
    )
}
_STATUS_BY_UPPER = {name.upper(): code for name, code in HTTP_STATUS_CODES.items()}
_STATUS_VALUES = frozenset(HTTP_STATUS_CODES.values())


def _status_code(value: object) -> int:
    # A defined StatusCode, by name (any ASCII case, as Envoy parses enums) or number; not
    # Empty (0), which HttpStatus.code excludes.
    name = enum_name(value)
    if isinstance(name, str) and name in _STATUS_BY_UPPER:
        return _STATUS_BY_UPPER[name]
    if isinstance(value, int) and not isinstance(value, bool) and value in _STATUS_VALUES:
        return value
    raise PydanticCustomError(
        "enum",
        "expected an HTTP status Envoy's StatusCode defines (e.g. 429 or TooManyRequests), "
        "got {got}",
        {"got": show(value)},
    )


class HttpStatus(Message):
    """envoy.type.v3.HttpStatus."""

    code: Annotated[int, BeforeValidator(_status_code)]


class TokenBucket(Message):
    """envoy.type.v3.TokenBucket: `max_tokens`, refilled by `tokens_per_fill` every
    `fill_interval` (Envoy 1.40 adds the tokens continuously at that rate)."""

    # Envoy 1.40 accepts 0 (checked with --mode validate): a bucket that never lets through.
    max_tokens: Annotated[UInt, Field(le=4294967295)]
    tokens_per_fill: Annotated[UInt, Field(ge=1, le=4294967295)] = 1
    fill_interval: Duration

    @field_validator("fill_interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value <= 0:
            raise PydanticCustomError("duration", "value must be greater than 0s", {})
        return value


class XRateLimitHeadersRFCVersion(Enum):
    """common.ratelimit.v3.XRateLimitHeadersRFCVersion."""

    OFF = 0
    DRAFT_VERSION_03 = 1


XRateLimitHeadersField = Annotated[
    XRateLimitHeadersRFCVersion, BeforeValidator(_enum_parser(XRateLimitHeadersRFCVersion))
]


class LocalRateLimit(TypedMessage):
    """The local rate limit filter (envoy.filters.http.local_ratelimit), also as its
    per-route config. Descriptors need the routes' `rate_limits` actions, which podproxy does
    not have yet; so do `stage` and `vh_rate_limits`, which only choose among those."""

    TYPE_URL = LOCAL_RATELIMIT_TYPE
    UNSUPPORTED = _names(
        """
        descriptors stage vh_rate_limits rate_limits local_cluster_rate_limit
        max_dynamic_descriptors
        """
    )
    stat_prefix: Str
    status: HttpStatus | None = None
    token_bucket: TokenBucket | None = None
    filter_enabled: RuntimeFractionalPercent | None = None
    filter_enforced: RuntimeFractionalPercent | None = None
    request_headers_to_add_when_not_enforced: Annotated[
        tuple[LiteralHeaderValueOption, ...], Field(max_length=10)
    ] = ()
    response_headers_to_add: Annotated[
        tuple[LiteralHeaderValueOption, ...], Field(max_length=10)
    ] = ()
    local_rate_limit_per_downstream_connection: StrictBool = False
    enable_x_ratelimit_headers: XRateLimitHeadersField = XRateLimitHeadersRFCVersion.OFF
    # Only decides anything when a descriptor matched: without descriptors the default bucket
    # is always the one consumed, whatever this says.
    always_consume_default_token_bucket: StrictBool = True
    rate_limited_as_resource_exhausted: StrictBool = False

    @field_validator("stat_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("token_bucket")
    @classmethod
    def _fill_timer(cls, value: TokenBucket | None) -> TokenBucket | None:
        # Envoy reads the interval in whole milliseconds and refuses less than 50.
        if value is not None and int(value.fill_interval * 1000 + 1e-9) < 50:
            raise ValueError("local rate limit token bucket fill timer must be >= 50ms")
        return value


class LocalRateLimitPerRoute(LocalRateLimit):
    """A LocalRateLimit in typed_per_filter_config: it must have its own bucket."""

    @model_validator(mode="after")
    def _bucket(self) -> LocalRateLimitPerRoute:
        if self.token_bucket is None:
            raise ValueError("local rate limit token bucket must be set for per filter configs")
        return self


class HealthCheck(TypedMessage):
    """The health check filter (envoy.filters.http.health_check): answers health checks from
    the server's state (and its clusters' health), or passes them on and caches the answer."""

    TYPE_URL = HEALTH_CHECK_TYPE
    # A BoolValue Envoy requires (HealthCheckValidationError without it).
    pass_through_mode: StrictBool
    cache_time: OptDuration = None
    headers: tuple[PseudoHeaderMatcher, ...] = ()
    # Cluster name -> envoy.type.v3.Percent of its hosts that must be healthy (or degraded).
    cluster_min_healthy_percentages: dict[Str, float] = {}

    @field_validator("cluster_min_healthy_percentages", mode="before")
    @classmethod
    def _percents(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        out: dict[object, float] = {}
        for name, pct in value.items():
            v = pct.get("value", 0.0) if isinstance(pct, dict) and set(pct) <= {"value"} else None
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 100:
                raise PydanticCustomError(
                    "percent",
                    "{name}: expected a percent like {{value: 50}}, got {got}",
                    {"name": show(name), "got": show(pct)},
                )
            out[name] = float(v)
        return out

    @model_validator(mode="after")
    def _cache(self) -> HealthCheck:
        if not self.pass_through_mode and self.cache_time:
            # Envoy: "cache_time_ms must not be set when path_through_mode is disabled".
            raise ValueError("cache_time: must not be set when pass_through_mode is false")
        return self


class Cors(TypedMessage):
    """The CORS filter (envoy.filters.http.cors): no settings of its own; its policies are on
    the virtual hosts and routes."""

    TYPE_URL = CORS_TYPE


class GrpcWeb(TypedMessage):
    """The gRPC-Web filter (envoy.filters.http.grpc_web): no settings (an empty message)."""

    TYPE_URL = GRPC_WEB_TYPE


class GrpcHttp1Bridge(TypedMessage):
    """The gRPC HTTP/1.1 bridge (envoy.filters.http.grpc_http1_bridge.v3.Config)."""

    TYPE_URL = GRPC_HTTP1_BRIDGE_TYPE
    # An `application/x-protobuf` request becomes a gRPC call (its body framed as one
    # message), and the response body loses its frame header again.
    upgrade_protobuf_to_grpc: StrictBool = False
    # A bridged request's query string is cut off its path (gRPC servers know no queries).
    ignore_query_parameters: StrictBool = False


class GrpcMethodListService(Message):
    """envoy.config.core.v3.GrpcMethodList.Service: a fully qualified service name and the
    methods of it that are listed."""

    name: Annotated[Str, Field(min_length=1)]
    method_names: Annotated[tuple[Str, ...], Field(min_length=1)]


class GrpcMethodList(Message):
    """envoy.config.core.v3.GrpcMethodList."""

    services: tuple[GrpcMethodListService, ...] = ()


class GrpcStats(TypedMessage):
    """The gRPC statistics filter (envoy.filters.http.grpc_stats.v3.FilterConfig)."""

    TYPE_URL = GRPC_STATS_TYPE
    # Envoy keeps the message counts in the stream's filter state, where only the
    # FILTER_STATE access log operator (or another filter) reads them; podproxy has neither,
    # so true would do nothing visible: refused rather than silently ignored.
    emit_filter_state: StrictBool = False
    # oneof per_method_stat_specifier: neither set means no per-method names (Envoy's
    # default since 1.18; it was all methods before).
    individual_method_stats_allowlist: GrpcMethodList | None = None
    stats_for_all_methods: StrictBool | None = None
    enable_upstream_stats: StrictBool = False
    replace_dots_in_grpc_service_name: StrictBool = False

    @field_validator("emit_filter_state")
    @classmethod
    def _no_filter_state(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "true is not supported by podproxy: the filter state it fills is read only by "
                "the FILTER_STATE access log operator, which podproxy does not have"
            )
        return value

    @model_validator(mode="after")
    def _oneof(self) -> GrpcStats:
        _one_of(
            self, ("individual_method_stats_allowlist", "stats_for_all_methods"), required=False
        )
        return self


class RegexMatchAndSubstitute(Message):
    pattern: RegexMatcher
    substitution: Str


class RedirectAction(Message):
    https_redirect: StrictBool = False
    scheme_redirect: Str | None = None
    host_redirect: Str | None = None
    port_redirect: Annotated[UInt, Field(le=4294967295)] = 0
    path_redirect: Str | None = None
    prefix_rewrite: Str | None = None
    regex_rewrite: RegexMatchAndSubstitute | None = None
    response_code: RedirectResponseCodeField = RedirectResponseCode.MOVED_PERMANENTLY
    strip_query: StrictBool = False

    @model_validator(mode="after")
    def _oneofs(self) -> RedirectAction:
        if self.https_redirect and self.scheme_redirect is not None:
            raise ValueError("at most one of https_redirect, scheme_redirect may be set")
        _one_of(self, ("path_redirect", "prefix_rewrite", "regex_rewrite"), required=False)
        return self


class Router(TypedMessage):
    TYPE_URL = ROUTER_TYPE
    UNSUPPORTED = _names(
        """
        start_child_span upstream_log upstream_log_options
        strict_check_headers respect_expected_rq_timeout
        suppress_grpc_request_failure_code_stats upstream_http_filters
        reject_connect_request_early_data
        """
    )
    suppress_envoy_headers: StrictBool = False
    # False: the router records no per-response-code and timing stats on clusters (Envoy's
    # "dynamic" stats: upstream_rq_<code>, upstream_rq_<class>xx, upstream_rq_completed,
    # upstream_rq_time), for speed.
    dynamic_stats: StrictBool = True


ROUTER_NAMES = frozenset({"envoy.filters.http.router", "envoy.router"})

# The HTTP filters podproxy has: v3 name → the typed_config it takes (normalize.py maps the v2
# names and type URLs onto these). The router comes last in every chain.
HTTP_FILTER_CONFIGS: dict[str, type[TypedMessage]] = {
    "envoy.filters.http.router": Router,
    "envoy.filters.http.fault": HTTPFault,
    "envoy.filters.http.buffer": Buffer,
    "envoy.filters.http.cors": Cors,
    "envoy.filters.http.health_check": HealthCheck,
    "envoy.filters.http.local_ratelimit": LocalRateLimit,
    "envoy.filters.http.grpc_web": GrpcWeb,
    "envoy.filters.http.grpc_http1_bridge": GrpcHttp1Bridge,
    "envoy.filters.http.grpc_stats": GrpcStats,
}
# What each takes in typed_per_filter_config (v3 type URL → model).
PER_ROUTE_CONFIGS: dict[str, type[TypedMessage]] = {
    FAULT_TYPE: HTTPFault,
    BUFFER_PER_ROUTE_TYPE: BufferPerRoute,
    LOCAL_RATELIMIT_TYPE: LocalRateLimitPerRoute,
    CORS_POLICY_TYPE: CorsPolicy,
}
# Every typed config a filter or route may hold, by type URL: the union's tags.
TYPED_CONFIGS: dict[str, type[TypedMessage]] = {
    **{m.TYPE_URL: m for m in HTTP_FILTER_CONFIGS.values()},
    **PER_ROUTE_CONFIGS,
}


def _type_tag(value: Any) -> str | None:
    url = value.get("@type") if isinstance(value, dict) else getattr(value, "type_url", None)
    return url if url in TYPED_CONFIGS else None


def _typed_union(models: dict[str, type[TypedMessage]]) -> Any:
    """A `typed_config` field holding one of `models`, picked by its `@type` (the loader drops
    the tag from error paths; an unknown type is an error naming it)."""
    members = tuple(Annotated[m, Tag(url)] for url, m in models.items())
    return Annotated[
        typing.Union[members],  # noqa: UP007 (a runtime-built union)
        Discriminator(
            _type_tag,
            custom_error_type="type_url",
            custom_error_message="Envoy type not supported here by podproxy yet",
        ),
    ]


FilterConfig = _typed_union({m.TYPE_URL: m for m in HTTP_FILTER_CONFIGS.values()})
# What FilterConfig.config holds: a filter's own per-route config.
PerRouteConfig = _typed_union(dict(PER_ROUTE_CONFIGS))


class RouteFilterConfig(TypedMessage):
    """envoy.config.route.v3.FilterConfig: a per-route config that can also turn on a filter
    the chain has `disabled: true` (or turn one off)."""

    TYPE_URL = ROUTE_FILTER_CONFIG_TYPE
    wraps_config: ClassVar[bool] = True
    config: PerRouteConfig | None = None  # type: ignore[valid-type]
    is_optional: StrictBool = False
    disabled: StrictBool = False


PER_ROUTE_CONFIGS[ROUTE_FILTER_CONFIG_TYPE] = RouteFilterConfig
TYPED_CONFIGS[ROUTE_FILTER_CONFIG_TYPE] = RouteFilterConfig
PerFilterConfig = _typed_union(PER_ROUTE_CONFIGS)


class Route(HeaderMutations):
    UNSUPPORTED = _names(
        """
        filter_action non_forwarding_action metadata decorator tracing
        per_request_buffer_limit_bytes stat_prefix request_body_buffer_limit
        """
    )
    name: Str | None = None
    match: RouteMatch
    route: RouteAction | None = None
    redirect: RedirectAction | None = None
    direct_response: DirectResponseAction | None = None
    typed_per_filter_config: dict[Str, PerFilterConfig] = {}  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _action(self) -> Route:
        _one_of(self, ("route", "redirect", "direct_response"))
        return self


class VirtualHost(HeaderMutations):
    UNSUPPORTED = _names(
        """
        matcher require_tls virtual_clusters rate_limits retry_policy retry_policy_typed_config
        hedge_policy include_is_timeout_retry_header per_request_buffer_limit_bytes
        request_body_buffer_limit metadata
        """
    )
    name: Annotated[Str, Field(min_length=1)]
    domains: Annotated[tuple[Str, ...], Field(min_length=1)]
    routes: tuple[Route, ...] = ()
    typed_per_filter_config: dict[Str, PerFilterConfig] = {}  # type: ignore[valid-type]
    cors: RouteCorsPolicy | None = None  # deprecated in v3; see RouteCorsPolicy
    request_mirror_policies: MirrorPolicies = ()
    # x-envoy-attempt-count on the upstream request / on the response (router.cc).
    include_request_attempt_count: StrictBool = False
    include_attempt_count_in_response: StrictBool = False


class RouteConfiguration(HeaderMutations):
    UNSUPPORTED = _names(
        """
        vhds internal_only_headers validate_clusters max_direct_response_body_size_bytes
        cluster_specifier_plugins ignore_port_in_host_matching
        vhost_header ignore_path_parameters_in_path_matching typed_per_filter_config metadata
        """
    )
    name: Str = ""
    virtual_hosts: tuple[VirtualHost, ...] = ()
    # Envoy applies each level's header mutations from the route out to the route
    # configuration (so the least specific wins); true reverses that.
    most_specific_header_mutations_wins: StrictBool = False
    request_mirror_policies: MirrorPolicies = ()


class HttpFilter(Message):
    UNSUPPORTED = _names("config_discovery")
    # An unknown filter marked optional is left out instead of refused (Envoy's is_optional);
    # before `name`, so that name's check sees it.
    is_optional: StrictBool = False
    name: Annotated[Str, Field(min_length=1)]
    typed_config: FilterConfig | None = None  # type: ignore[valid-type]
    # Off unless a route's typed_per_filter_config turns it on (envoy.config.route.v3.
    # FilterConfig with disabled: false, or any config for it).
    disabled: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _optional(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("name")
        optional = data.get("is_optional") is True
        if optional and isinstance(name, str) and name not in HTTP_FILTER_CONFIGS:
            # Envoy skips an optional filter it does not know, config and all.
            return {"name": name, "is_optional": True}
        typed = data.get("typed_config")
        if isinstance(typed, dict) and "@type" not in typed and isinstance(name, str):
            # The filter's name says which config this is (normalize.py does the same).
            model = HTTP_FILTER_CONFIGS.get(name) or (Router if name in ROUTER_NAMES else None)
            if model is not None:
                data = {**data, "typed_config": {"@type": model.TYPE_URL, **typed}}
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        if value in HTTP_FILTER_CONFIGS or value in ROUTER_NAMES:
            return value
        if info.data.get("is_optional"):
            return value
        raise PydanticCustomError(
            "unsupported",
            "{got}: Envoy HTTP filter not supported by podproxy yet",
            {"got": show(value)},
        )

    @property
    def skipped(self) -> bool:
        """An optional filter podproxy does not know: not in the chain."""
        return self.is_optional and self.name not in HTTP_FILTER_CONFIGS

    def router(self) -> Router:
        """The router's config (`Router()` defaults when no typed_config was given)."""
        tc = self.typed_config
        return tc if isinstance(tc, Router) else Router()


class UpgradeConfig(Message):
    """HttpConnectionManager.UpgradeConfig: an upgrade type (matched case-insensitively with
    the request's `upgrade` header) the connection manager lets through, unless `enabled` is
    false or the route says otherwise (RouteAction.upgrade_configs)."""

    upgrade_type: Annotated[Str, Field(min_length=1)]
    filters: tuple[HttpFilter, ...] = ()
    enabled: StrictBool = True

    @field_validator("upgrade_type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value.lower() == CONNECT_UPGRADE:
            raise _connect_unsupported()
        return value

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: tuple[HttpFilter, ...]) -> tuple[HttpFilter, ...]:
        if value:
            # Envoy runs such an upgrade through this chain instead of http_filters.
            raise PydanticCustomError(
                "unsupported",
                "a filter chain of its own per upgrade type is not supported by podproxy yet: "
                "leave filters out, and the upgrade goes through the http_filters",
            )
        return value


def _hcm_upgrades(value: tuple[UpgradeConfig, ...]) -> tuple[UpgradeConfig, ...]:
    seen: set[str] = set()
    for u in value:
        key = u.upgrade_type.lower()
        if key in seen:
            # Envoy's HttpConnectionManagerConfig, word for word.
            raise ValueError(
                f"Error: multiple upgrade configs with the same name: '{u.upgrade_type}'"
            )
        seen.add(key)
    return value


class HttpConnectionManager(TypedMessage):
    TYPE_URL = HCM_TYPE
    UNSUPPORTED = _names(
        """
        rds scoped_routes tracing http1_safe_max_connection_duration
        http3_protocol_options
        stream_flush_timeout access_log_flush_interval
        flush_access_log_on_new_request access_log_options original_ip_detection_extensions
        early_header_mutation_extensions internal_address_config via
        forward_client_cert_details set_current_client_cert_details
        forward_client_cert_matcher proxy_100_continue
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6 normalize_path
        merge_slashes path_with_escaped_slashes_action request_id_extension
        local_reply_config strip_matching_host_port strip_any_host_port
        stream_error_on_invalid_http_message path_normalization_options
        strip_trailing_host_dot proxy_status_config typed_header_validation_config
        append_x_forwarded_port append_local_overload add_proxy_protocol_connection_state
        forward_proto_config
        """
    )
    stat_prefix: Annotated[Str, Field(min_length=1)]
    codec_type: CodecTypeField = CodecType.AUTO
    route_config: RouteConfiguration
    http_filters: tuple[HttpFilter, ...] = ()
    server_name: Str = "podproxy"
    server_header_transformation: ServerHeaderTransformationField = (
        ServerHeaderTransformation.OVERWRITE
    )
    use_remote_address: StrictBool = False
    xff_num_trusted_hops: Annotated[UInt, Field(le=4294967295)] = 0
    skip_xff_append: StrictBool = False
    add_user_agent: StrictBool = False
    scheme_header_transformation: SchemeHeaderTransformation = SchemeHeaderTransformation()
    generate_request_id: StrictBool = True
    preserve_external_request_id: StrictBool = False
    always_set_request_id_in_response: StrictBool = False
    stream_idle_timeout: ZeroDisables = 300.0
    request_timeout: ZeroDisables = None
    request_headers_timeout: ZeroDisables = None
    # Not 0-disables: Envoy arms the drain timer with it as is, so 0 closes at once.
    drain_timeout: Duration = 5.0
    delayed_close_timeout: ZeroDisables = 1.0
    max_request_headers_kb: Annotated[UInt, Field(ge=1, le=8192)] = 60
    common_http_protocol_options: DownstreamHttpProtocolOptions = DownstreamHttpProtocolOptions()
    http_protocol_options: Http1ProtocolOptions = Http1ProtocolOptions()
    http2_protocol_options: Http2ProtocolOptions = Http2ProtocolOptions()
    access_log: tuple[AccessLog, ...] = ()
    upgrade_configs: Annotated[tuple[UpgradeConfig, ...], AfterValidator(_hcm_upgrades)] = ()

    @field_validator("codec_type")
    @classmethod
    def _codec(cls, value: CodecType) -> CodecType:
        if value is CodecType.HTTP3:
            raise _unsupported_value(value)
        return value

    @field_validator("common_http_protocol_options")
    @classmethod
    def _downstream_options(
        cls, value: DownstreamHttpProtocolOptions
    ) -> DownstreamHttpProtocolOptions:
        if value.max_response_headers_kb is not None:
            raise PydanticCustomError(
                "unsupported",
                "max_response_headers_kb: applies to a cluster's responses; set it on the cluster",
            )
        return value

    @field_validator("http_filters")
    @classmethod
    def _router_last(cls, value: tuple[HttpFilter, ...]) -> tuple[HttpFilter, ...]:
        if not value or value[-1].name not in ROUTER_NAMES:
            raise ValueError("the last HTTP filter must be the router (envoy.filters.http.router)")
        return value

    def router(self) -> Router:
        return self.http_filters[-1].router()


class NetworkFilter(Message):
    UNSUPPORTED = _names("config_discovery")
    name: Str
    typed_config: HttpConnectionManager


# --- TLS: transport sockets, filter chain matching, listener filters (issue 11 §4) ---------
#
# extensions/transport_sockets/tls/v3/{tls,common,secret}.proto,
# config/listener/v3/listener_components.proto (FilterChainMatch), and the tls_inspector
# listener filter. podproxy.tls builds `ssl` contexts from these; what Python's ssl cannot do
# (several certificates per context, several ECDH curves, verifying SANs inside the handshake)
# is either an error here or documented in the README's TLS section.

DOWNSTREAM_TLS_TYPE = TYPE_URL_PREFIX + (
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
UPSTREAM_TLS_TYPE = TYPE_URL_PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER_TYPE = TYPE_URL_PREFIX + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
TLS_INSPECTOR_TYPE = TYPE_URL_PREFIX + (
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
# Transport socket names (the `tls`/`raw_buffer` aliases are still registered in Envoy).
TLS_SOCKET_NAMES = frozenset({"envoy.transport_sockets.tls", "tls"})
RAW_BUFFER_NAMES = frozenset({"envoy.transport_sockets.raw_buffer", "raw_buffer"})
TLS_INSPECTOR_NAME = "envoy.filters.listener.tls_inspector"


class TlsProtocol(Enum):
    """tls.v3.TlsParameters.TlsProtocol; TLS_AUTO is each side's default (podproxy.tls)."""

    TLS_AUTO = 0
    TLSv1_0 = 1
    TLSv1_1 = 2
    TLSv1_2 = 3
    TLSv1_3 = 4


class SanType(Enum):
    """tls.v3.SubjectAltNameMatcher.SanType."""

    SAN_TYPE_UNSPECIFIED = 0
    EMAIL = 1
    DNS = 2
    URI = 3
    IP_ADDRESS = 4
    OTHER_NAME = 5


def _tls_protocol(value: object) -> TlsProtocol:
    # Proto enum names are case-sensitive in their digits and `v`: `TLSv1_2`, read with
    # Envoy's case-insensitive enum parsing (so `tlsv1_2` works too).
    if isinstance(value, str) and value.isascii():
        for member in TlsProtocol:
            if member.name.upper() == value.upper():
                return member
    return _enum_parser(TlsProtocol)(value)


TlsProtocolField = Annotated[TlsProtocol, BeforeValidator(_tls_protocol)]
SanTypeField = Annotated[SanType, BeforeValidator(_enum_parser(SanType))]


class TlsParameters(Message):
    UNSUPPORTED = _names("signature_algorithms compliance_policies")
    tls_minimum_protocol_version: TlsProtocolField = TlsProtocol.TLS_AUTO
    tls_maximum_protocol_version: TlsProtocolField = TlsProtocol.TLS_AUTO
    # BoringSSL cipher names (`[A|B]` equal-preference groups allowed); checked and
    # translated to OpenSSL's by podproxy.tls, which knows the SSL library.
    cipher_suites: tuple[Str, ...] = ()
    ecdh_curves: tuple[Str, ...] = ()


class TlsCertificate(Message):
    UNSUPPORTED = _names(
        """
        ocsp_staple signed_certificate_timestamp pkcs12 watched_directory
        private_key_provider
        """
    )
    certificate_chain: DataSource
    private_key: DataSource
    password: DataSource | None = None


class SubjectAltNameMatcher(Message):
    san_type: SanTypeField
    matcher: StringMatcher
    oid: Str = ""

    @field_validator("san_type")
    @classmethod
    def _type(cls, value: SanType) -> SanType:
        # proto: enum {defined_only: true not_in: 0}; OTHER_NAME needs an ASN.1 decoder.
        if value is SanType.SAN_TYPE_UNSPECIFIED:
            raise PydanticCustomError("enum", "san_type must be set")
        if value is SanType.OTHER_NAME:
            raise _unsupported_value(value)
        return value


_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class CertificateValidationContext(Message):
    UNSUPPORTED = _names(
        """
        system_root_certs watched_directory require_signed_certificate_timestamp crl
        allow_expired_certificate trust_chain_verification custom_validator_config
        only_verify_leaf_cert_crl max_verify_depth ca_certificate_provider_instance
        """
    )
    trusted_ca: DataSource | None = None
    match_typed_subject_alt_names: tuple[SubjectAltNameMatcher, ...] = ()
    # Deprecated in v3 (any SAN type); v2's verify_subject_alt_name becomes exact matchers
    # here (config.normalize).
    match_subject_alt_names: tuple[StringMatcher, ...] = ()
    verify_certificate_hash: tuple[Str, ...] = ()
    verify_certificate_spki: tuple[Str, ...] = ()

    @field_validator("verify_certificate_hash")
    @classmethod
    def _hashes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Hex SHA-256 of the DER certificate, colons allowed (`DF:6F:...`).
        for h in value:
            if not _HEX_SHA256.match(h.replace(":", "")):
                raise PydanticCustomError(
                    "base64",
                    "expected a hex SHA-256 certificate hash, got {got}",
                    {"got": show(h)},
                )
        return tuple(h.replace(":", "").lower() for h in value)

    @field_validator("verify_certificate_spki")
    @classmethod
    def _pins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Base64 SHA-256 of the DER SubjectPublicKeyInfo (44 characters).
        for pin in value:
            try:
                ok = len(base64.b64decode(pin, validate=True)) == 32
            except binascii.Error:
                ok = False
            if not ok:
                raise PydanticCustomError(
                    "base64",
                    "expected a base64 SHA-256 SPKI pin, got {got}",
                    {"got": show(pin)},
                )
        return value

    @model_validator(mode="after")
    def _san_needs_ca(self) -> CertificateValidationContext:
        # Envoy (DefaultCertValidator::initializeSslContexts) refuses SAN checks without a CA.
        if self.trusted_ca is None and (
            self.match_typed_subject_alt_names or self.match_subject_alt_names
        ):
            raise ValueError(
                "SAN-based verification of peer certificates without trusted CA is insecure "
                "and not allowed"
            )
        return self


class CommonTlsContext(Message):
    UNSUPPORTED = _names(
        """
        tls_certificate_sds_secret_configs tls_certificate_provider_instance
        tls_certificate_certificate_provider tls_certificate_certificate_provider_instance
        validation_context_sds_secret_config combined_validation_context
        validation_context_certificate_provider
        validation_context_certificate_provider_instance key_log custom_handshaker
        custom_tls_certificate_selector
        """
    )
    tls_params: TlsParameters = TlsParameters()
    # Envoy servers may hold several (chosen by SNI and key type); Python's ssl loads one
    # chain per context, so podproxy takes at most one: several is a clear error.
    tls_certificates: Annotated[tuple[TlsCertificate, ...], Field(max_length=1)] = ()
    validation_context: CertificateValidationContext | None = None
    alpn_protocols: tuple[Str, ...] = ()


class DownstreamTlsContext(TypedMessage):
    TYPE_URL = DOWNSTREAM_TLS_TYPE
    UNSUPPORTED = _names(
        """
        require_sni session_ticket_keys session_ticket_keys_sds_secret_config
        disable_stateless_session_resumption disable_stateful_session_resumption
        session_timeout ocsp_staple_policy full_scan_certs_on_sni_mismatch
        prefer_client_ciphers tls_session_ticket_keys
        """
    )
    common_tls_context: CommonTlsContext = CommonTlsContext()
    require_client_certificate: StrictBool = False

    @model_validator(mode="after")
    def _server_cert(self) -> DownstreamTlsContext:
        if not self.common_tls_context.tls_certificates:
            raise ValueError("a listener's TLS context needs a certificate: set tls_certificates")
        vc = self.common_tls_context.validation_context
        if self.require_client_certificate and (vc is None or vc.trusted_ca is None):
            # Python's ssl asks for a client certificate only to verify it against a CA.
            raise ValueError(
                "require_client_certificate needs validation_context.trusted_ca in podproxy"
            )
        if (
            vc is not None
            and vc.trusted_ca is None
            and (vc.verify_certificate_hash or vc.verify_certificate_spki)
        ):
            raise ValueError(
                "validation_context: pinning client certificates without trusted_ca is not "
                "supported by podproxy (Python's ssl only requests certificates it verifies)"
            )
        return self


class UpstreamTlsContext(TypedMessage):
    TYPE_URL = UPSTREAM_TLS_TYPE
    UNSUPPORTED = _names(
        """
        allow_renegotiation max_session_keys enforce_rsa_key_usage auto_host_sni
        auto_sni_san_validation
        """
    )
    common_tls_context: CommonTlsContext = CommonTlsContext()
    sni: Annotated[Str, Field(max_length=255)] = ""


class RawBuffer(TypedMessage):
    TYPE_URL = RAW_BUFFER_TYPE


class TlsInspector(TypedMessage):
    TYPE_URL = TLS_INSPECTOR_TYPE
    UNSUPPORTED = _names(
        """
        enable_ja3_fingerprinting enable_ja4_fingerprinting initial_read_buffer_size
        max_client_hello_size close_connection_on_client_hello_parsing_errors
        """
    )


DownstreamSocketConfig = _typed_union(
    {DOWNSTREAM_TLS_TYPE: DownstreamTlsContext, RAW_BUFFER_TYPE: RawBuffer}
)
UpstreamSocketConfig = _typed_union(
    {UPSTREAM_TLS_TYPE: UpstreamTlsContext, RAW_BUFFER_TYPE: RawBuffer}
)
TYPED_CONFIGS.update(
    {
        DOWNSTREAM_TLS_TYPE: DownstreamTlsContext,
        UPSTREAM_TLS_TYPE: UpstreamTlsContext,
        RAW_BUFFER_TYPE: RawBuffer,
        TLS_INSPECTOR_TYPE: TlsInspector,
    }
)


class _TransportSocket(Message):
    """core.v3.TransportSocket. Envoy picks the socket by its typed_config's type; without
    one, the name must be raw_buffer's (config.normalize fills in TLS types by name)."""

    name: Annotated[Str, Field(min_length=1)]

    @model_validator(mode="after")
    def _kind(self) -> _TransportSocket:
        typed = getattr(self, "typed_config", None)
        if typed is None and self.name not in RAW_BUFFER_NAMES:
            raise PydanticCustomError(
                "unsupported",
                "{got}: Envoy transport socket not supported by podproxy yet "
                "(envoy.transport_sockets.tls or raw_buffer, with a typed_config)",
                {"got": show(self.name)},
            )
        return self


class DownstreamTransportSocket(_TransportSocket):
    typed_config: DownstreamSocketConfig | None = None  # type: ignore[valid-type]

    def tls(self) -> DownstreamTlsContext | None:
        tc = self.typed_config
        return tc if isinstance(tc, DownstreamTlsContext) else None


class UpstreamTransportSocket(_TransportSocket):
    typed_config: UpstreamSocketConfig | None = None  # type: ignore[valid-type]

    def tls(self) -> UpstreamTlsContext | None:
        tc = self.typed_config
        return tc if isinstance(tc, UpstreamTlsContext) else None


def _server_names(value: tuple[str, ...]) -> tuple[str, ...]:
    # Envoy (filter_chain_manager_impl.cc): only a leading `*.` wildcard, lower-cased
    # comparison is left to matching; anything else with `*` is refused at load.
    for name in value:
        if "*" in name and not (name.startswith("*.") and "*" not in name[2:]):
            raise PydanticCustomError(
                "unsupported",
                'partial wildcards are not supported in "server_names", got {got}',
                {"got": show(name)},
            )
    return value


class FilterChainMatch(Message):
    UNSUPPORTED = _names(
        """
        destination_port prefix_ranges address_suffix suffix_len
        direct_source_prefix_ranges source_type source_prefix_ranges source_ports
        """
    )
    server_names: Annotated[tuple[Str, ...], AfterValidator(_server_names)] = ()
    transport_protocol: Str = ""
    application_protocols: tuple[Str, ...] = ()


class ListenerFilter(Message):
    UNSUPPORTED = _names("filter_disabled config_discovery")
    name: Str
    typed_config: TlsInspector | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value != TLS_INSPECTOR_NAME:
            raise PydanticCustomError(
                "unsupported",
                "{got}: Envoy listener filter not supported by podproxy yet",
                {"got": show(value)},
            )
        return value


# --- end of TLS models ----------------------------------------------------------------------


class FilterChain(Message):
    UNSUPPORTED = _names("use_proxy_proto metadata transport_socket_connect_timeout")
    name: Str = ""
    filter_chain_match: FilterChainMatch | None = None
    filters: Annotated[tuple[NetworkFilter, ...], Field(min_length=1, max_length=1)]
    transport_socket: DownstreamTransportSocket | None = None

    def tls(self) -> DownstreamTlsContext | None:
        ts = self.transport_socket
        return ts.tls() if ts is not None else None


class Listener(Message):
    UNSUPPORTED = _names(
        """
        additional_addresses stat_prefix fcds_config filter_chain_matcher use_original_dst
        metadata deprecated_v1 drain_type transparent freebind
        socket_options tcp_fast_open_queue_length udp_listener_config
        api_listener connection_balance_config reuse_port enable_reuse_port access_log
        tcp_backlog_size max_connections_to_accept_per_socket_event bind_to_port
        internal_listener enable_mptcp ignore_global_conn_limit bypass_overload_manager
        tcp_keepalive
        """
    )
    name: Str = ""
    address: Address
    filter_chains: tuple[FilterChain, ...] = ()
    # Used when no filter chain matches (Envoy 1.19+).
    default_filter_chain: FilterChain | None = None
    listener_filters: tuple[ListenerFilter, ...] = ()
    # Envoy: a connection whose listener filters have not finished by then is closed (or
    # goes on to chain selection with what is known, if continue_on_...); 0 disables it.
    listener_filters_timeout: ZeroDisables = 15.0
    continue_on_listener_filters_timeout: StrictBool = False
    per_connection_buffer_limit_bytes: UInt = 1048576
    # Metadata in podproxy: Envoy reads it for tracing (span direction), original_dst on Windows
    # and `/drain_listeners?inboundonly`, none of which podproxy has (README).
    traffic_direction: TrafficDirectionField = TrafficDirection.UNSPECIFIED

    @model_validator(mode="after")
    def _chains(self) -> Listener:
        if not self.filter_chains and self.default_filter_chain is None:
            raise ValueError("no filter chains specified")
        seen: set[tuple[tuple[str, ...], str, tuple[str, ...]]] = set()
        for chain in self.filter_chains:
            m = chain.filter_chain_match or FilterChainMatch()
            key = (
                tuple(sorted(n.lower() for n in m.server_names)),
                m.transport_protocol,
                tuple(sorted(m.application_protocols)),
            )
            if key in seen:
                # Envoy's words (filter_chain_manager_impl.cc addFilterChains).
                raise ValueError("multiple filter chains with the same matching rules are defined")
            seen.add(key)
        return self

    def all_filter_chains(self) -> tuple[FilterChain, ...]:
        """The filter chains, then the default one if any."""
        extra = (self.default_filter_chain,) if self.default_filter_chain is not None else ()
        return self.filter_chains + extra


class Locality(Message):
    region: Str = ""
    zone: Str = ""
    sub_zone: Str = ""


class Endpoint(Message):
    UNSUPPORTED = _names("health_check_config additional_addresses")
    address: Address
    hostname: Str = ""


class LbEndpoint(Message):
    UNSUPPORTED = _names("endpoint_name metadata")
    endpoint: Endpoint
    load_balancing_weight: Annotated[UInt, Field(ge=1)] | None = None
    health_status: HealthStatusField = HealthStatus.UNKNOWN


class LocalityLbEndpoints(Message):
    UNSUPPORTED = _names(
        """
        metadata load_balancer_endpoints leds_cluster_locality_config proximity
        """
    )
    locality: Locality = Locality()
    lb_endpoints: tuple[LbEndpoint, ...] = ()
    priority: Annotated[UInt, Field(le=128)] = 0
    load_balancing_weight: Annotated[UInt, Field(ge=1)] | None = None


class ClusterLoadAssignment(Message):
    UNSUPPORTED = _names("named_endpoints policy")
    cluster_name: Annotated[Str, Field(min_length=1)]
    endpoints: tuple[LocalityLbEndpoints, ...] = ()


def _check_refresh(value: float) -> float:
    # Envoy: dns_refresh_rate must be greater than 1ms (cluster.proto, gt {nanos: 1000000}).
    if value <= 0.001:
        raise PydanticCustomError(
            "duration", "must be greater than 1ms, got {got}", {"got": format_duration(value)}
        )
    return value


class RefreshRate(Message):
    base_interval: Duration
    max_interval: OptDuration = None

    @field_validator("base_interval")
    @classmethod
    def _base(cls, value: float) -> float:
        return _check_refresh(value)

    @model_validator(mode="after")
    def _max(self) -> RefreshRate:
        if self.max_interval is None:
            object.__setattr__(self, "max_interval", 10 * self.base_interval)
        elif self.max_interval < self.base_interval:
            raise ValueError("max_interval must not be less than base_interval")
        return self


class DnsResolverOptions(Message):
    use_tcp_for_dns_lookups: StrictBool = False
    no_default_search_domain: StrictBool = False


class CaresDnsResolverConfig(TypedMessage):
    TYPE_URL = CARES_TYPE
    UNSUPPORTED = _names(
        """
        edns0_max_payload_size max_udp_channel_duration reinit_channel_on_timeout
        filter_unroutable_families udp_max_queries rotate_nameservers
        """
    )
    resolvers: tuple[Address, ...] = ()
    use_resolvers_as_fallback: StrictBool = False
    dns_resolver_options: DnsResolverOptions = DnsResolverOptions()
    query_timeout_seconds: Annotated[UInt, Field(ge=1)] | None = None
    query_tries: Annotated[UInt, Field(ge=1)] | None = None


class TypedDnsResolverConfig(Message):
    name: Str = "envoy.network.dns_resolver.cares"
    typed_config: CaresDnsResolverConfig = CaresDnsResolverConfig()


class DnsCluster(TypedMessage):
    TYPE_URL = DNS_CLUSTER_TYPE
    dns_refresh_rate: Duration = 5.0
    dns_failure_refresh_rate: RefreshRate | None = None
    respect_dns_ttl: StrictBool = False
    dns_jitter: OptDuration = None
    typed_dns_resolver_config: TypedDnsResolverConfig | None = None
    dns_lookup_family: DnsLookupFamilyField = DnsLookupFamily.AUTO
    all_addresses_in_single_endpoint: StrictBool = False
    dns_min_refresh_rate: OptDuration = None

    @field_validator("dns_refresh_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        return _check_refresh(value)


class CustomClusterType(Message):
    name: Str
    typed_config: DnsCluster = DnsCluster()

    @field_validator("name")
    @classmethod
    def _dns_only(cls, value: str) -> str:
        if value not in DNS_CLUSTER_NAMES:
            raise PydanticCustomError(
                "unsupported",
                "{got}: Envoy cluster type not supported by podproxy yet",
                {"got": show(value)},
            )
        return value


class CommonLbConfig(Message):
    UNSUPPORTED = _names(
        """
        zone_aware_lb_config locality_weighted_lb_config update_merge_window
        ignore_new_hosts_until_first_hc close_connections_on_host_set_change
        consistent_hashing_lb_config override_host_status
        """
    )
    healthy_panic_threshold: float = 50.0

    @field_validator("healthy_panic_threshold", mode="before")
    @classmethod
    def _percent(cls, value: object) -> float:
        # envoy.type.v3.Percent: {value: double in [0, 100]}.
        if isinstance(value, dict) and set(value) <= {"value"}:
            v = value.get("value", 0.0)
            if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 100:
                return float(v)
        raise PydanticCustomError(
            "percent", "expected a percent like {{value: 50}}, got {got}", {"got": show(value)}
        )


class LeastRequestLbConfig(Message):
    UNSUPPORTED = _names("active_request_bias slow_start_config")
    choice_count: Annotated[UInt, Field(ge=2)] = 2


# Cluster fields that only exist in the DnsCluster extension; copied over by `_cluster_type`.
_DNS_CLUSTER_FIELDS = (
    "dns_refresh_rate",
    "dns_failure_refresh_rate",
    "respect_dns_ttl",
    "dns_jitter",
    "typed_dns_resolver_config",
    "dns_lookup_family",
    "dns_min_refresh_rate",
)


class Cluster(Message):
    UNSUPPORTED = _names(
        """
        transport_socket_matches transport_socket_matcher alt_stat_name eds_cluster_config
        health_checks max_requests_per_connection circuit_breakers
        dns_resolution_config outlier_detection
        cleanup_interval upstream_bind_config lb_subset_config ring_hash_lb_config
        maglev_lb_config original_dst_lb_config round_robin_lb_config
        metadata upstream_connection_options
        close_connections_on_host_health_failure ignore_health_on_host_removal filters
        load_balancing_policy lrs_server lrs_report_endpoint_metrics track_timeout_budgets
        upstream_config track_cluster_stats preconnect_policy
        connection_pool_per_downstream_connection
        """
    )
    name: Annotated[Str, Field(min_length=1)]
    type: DiscoveryTypeField = DiscoveryType.STATIC
    cluster_type: CustomClusterType | None = None
    connect_timeout: Duration = 5.0
    lb_policy: LbPolicyField = LbPolicy.ROUND_ROBIN
    load_assignment: ClusterLoadAssignment | None = None
    dns_refresh_rate: Duration = 5.0
    dns_failure_refresh_rate: RefreshRate | None = None
    respect_dns_ttl: StrictBool = False
    dns_lookup_family: DnsLookupFamilyField = DnsLookupFamily.AUTO
    dns_jitter: OptDuration = None
    dns_min_refresh_rate: OptDuration = None
    dns_resolvers: tuple[Address, ...] = ()
    use_tcp_for_dns_lookups: StrictBool = False
    typed_dns_resolver_config: TypedDnsResolverConfig | None = None
    wait_for_warm_on_init: StrictBool = True
    per_connection_buffer_limit_bytes: UInt = 1048576
    common_http_protocol_options: HttpProtocolOptions = HttpProtocolOptions()
    upstream_http_protocol_options: CoreUpstreamHttpProtocolOptions | None = None
    # The deprecated per-protocol fields: http2_protocol_options, even `{}`, makes the
    # cluster speak HTTP/2 (prior knowledge); typed_extension_protocol_options is their
    # successor (reference/envoy-hcm.md §5.3).
    http_protocol_options: Http1ProtocolOptions | None = None
    http2_protocol_options: Http2ProtocolOptions | None = None
    protocol_selection: ProtocolSelectionField = ProtocolSelection.USE_CONFIGURED_PROTOCOL
    typed_extension_protocol_options: dict[str, UpstreamHttpProtocolOptions] = {}
    common_lb_config: CommonLbConfig = CommonLbConfig()
    least_request_lb_config: LeastRequestLbConfig = LeastRequestLbConfig()
    transport_socket: UpstreamTransportSocket | None = None

    def tls(self) -> UpstreamTlsContext | None:
        ts = self.transport_socket
        return ts.tls() if ts is not None else None

    @field_validator("typed_extension_protocol_options")
    @classmethod
    def _protocol_options(
        cls, value: dict[str, UpstreamHttpProtocolOptions]
    ) -> dict[str, UpstreamHttpProtocolOptions]:
        for key in value:
            if key != UPSTREAM_HTTP_OPTIONS_KEY:
                raise PydanticCustomError(
                    "unsupported",
                    "{got}: protocol options extension not supported by podproxy yet (only {want})",
                    {"got": key, "want": UPSTREAM_HTTP_OPTIONS_KEY},
                )
        return value

    @model_validator(mode="after")
    def _one_protocol(self) -> Cluster:
        # Envoy's createOptions: the typed extension, when given, wins over the deprecated
        # fields; without it, both deprecated fields need USE_DOWNSTREAM_PROTOCOL.
        if (
            not self.typed_extension_protocol_options
            and self.http_protocol_options is not None
            and self.http2_protocol_options is not None
            and self.protocol_selection is ProtocolSelection.USE_CONFIGURED_PROTOCOL
        ):
            raise ValueError(
                "both http_protocol_options and http2_protocol_options may only be configured "
                "with protocol_selection USE_DOWNSTREAM_PROTOCOL (as Envoy says)"
            )
        return self

    def upstream_protocol(self) -> tuple[str, Http2ProtocolOptions | None]:
        """What the cluster's pools speak: "http1", "http2", or "downstream" (the client's
        protocol: use_downstream_protocol_config / USE_DOWNSTREAM_PROTOCOL), with the
        HTTP/2 options to use for HTTP/2."""
        opts = self.typed_extension_protocol_options.get(UPSTREAM_HTTP_OPTIONS_KEY)
        if opts is not None:
            if opts.explicit_http_config is not None:
                h2 = opts.explicit_http_config.http2_protocol_options
                return ("http2", h2) if h2 is not None else ("http1", None)
            down = opts.use_downstream_protocol_config
            assert down is not None
            return "downstream", down.http2_protocol_options or Http2ProtocolOptions()
        if self.protocol_selection is ProtocolSelection.USE_DOWNSTREAM_PROTOCOL:
            return "downstream", self.http2_protocol_options or Http2ProtocolOptions()
        if self.http2_protocol_options is not None:
            return "http2", self.http2_protocol_options
        return "http1", None

    def auto_sni_options(self) -> CoreUpstreamHttpProtocolOptions | None:
        """upstream_http_protocol_options when it turns auto_sni or auto_san_validation on;
        the typed extension, when given, wins over the deprecated field (Envoy's
        createOptions takes all of a cluster's HTTP options from one place)."""
        opts = self.typed_extension_protocol_options.get(UPSTREAM_HTTP_OPTIONS_KEY)
        upo = (
            opts.upstream_http_protocol_options
            if opts is not None
            else (self.upstream_http_protocol_options)
        )
        return upo if upo is not None and upo.active else None

    def http_options(self) -> HttpProtocolOptions:
        """common_http_protocol_options, from the typed extension when given there."""
        opts = self.typed_extension_protocol_options.get(UPSTREAM_HTTP_OPTIONS_KEY)
        if opts is not None and opts.common_http_protocol_options is not None:
            return opts.common_http_protocol_options
        return self.common_http_protocol_options

    @field_validator("dns_min_refresh_rate", mode="before")
    @classmethod
    def _not_on_cluster(cls, value: object) -> object:
        # Only DnsCluster (cluster_type) has this field; Envoy's Cluster does not.
        raise PydanticCustomError("extra_forbidden", "unknown field")

    @field_validator("dns_refresh_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        return _check_refresh(value)

    @field_validator("type")
    @classmethod
    def _type(cls, value: DiscoveryType) -> DiscoveryType:
        if value in (DiscoveryType.EDS, DiscoveryType.ORIGINAL_DST):
            raise _unsupported_value(value)
        return value

    @field_validator("lb_policy")
    @classmethod
    def _lb(cls, value: LbPolicy) -> LbPolicy:
        if value in (LbPolicy.CLUSTER_PROVIDED, LbPolicy.LOAD_BALANCING_POLICY_CONFIG):
            raise _unsupported_value(value)
        return value

    @model_validator(mode="after")
    def _cluster_type(self) -> Cluster:
        if self.cluster_type is None:
            return self
        clash = sorted(set(self.model_fields_set) & {"type", *_DNS_CLUSTER_FIELDS})
        if clash:
            raise ValueError(f"cluster_type cannot be combined with {', '.join(clash)}")
        dns = self.cluster_type.typed_config
        kind = DiscoveryType.LOGICAL_DNS if dns.all_addresses_in_single_endpoint else None
        object.__setattr__(self, "type", kind or DiscoveryType.STRICT_DNS)
        for name in _DNS_CLUSTER_FIELDS:
            object.__setattr__(self, name, getattr(dns, name))
        return self


class StaticResources(Message):
    UNSUPPORTED = _names("secrets")
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()


class Node(Message):
    """The bootstrap node: who this proxy is. `--service-node` / `--service-cluster` override
    `id` / `cluster` (Envoy's LocalInfo); the rest is what xDS servers read, not podproxy."""

    UNSUPPORTED = _names(
        """
        metadata dynamic_parameters user_agent_name user_agent_version user_agent_build_version
        extensions client_features listening_addresses
        """
    )
    id: Str = ""
    cluster: Str = ""
    locality: Locality | None = None


class RuntimeDiskLayer(Message):
    """RuntimeLayer.DiskLayer: files under `symlink_root/subdirectory[/service cluster]`, read
    when a snapshot is loaded (podproxy.runtime)."""

    symlink_root: Str = ""
    subdirectory: Str = ""
    append_service_cluster: StrictBool = False


class RuntimeAdminLayer(Message):
    """RuntimeLayer.AdminLayer: the values `/runtime_modify` writes (an empty message)."""


def _runtime_struct(value: object) -> object:
    # static_layer is a google.protobuf.Struct; Envoy's ProtoLayer rejects list and null
    # values while it walks it (runtime_impl.cc walkProtoValue, "Invalid runtime entry value
    # for <key>"), so podproxy rejects them at load time, naming the key.
    if not isinstance(value, dict):
        raise PydanticCustomError("struct", "expected a mapping, got {got}", {"got": show(value)})
    bad = _bad_runtime_value(value, "")
    if bad is not None:
        key, got = bad
        raise PydanticCustomError(
            "struct",
            "Invalid runtime entry value for {key}: expected a string, number, boolean or "
            "mapping, got {got}",
            {"key": key, "got": show(got)},
        )
    return value


def _bad_runtime_value(obj: dict[str, object], prefix: str) -> tuple[str, object] | None:
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else k
        if v is None or isinstance(v, list):
            return key, v
        if isinstance(v, dict):
            found = _bad_runtime_value(v, key)
            if found is not None:
                return found
    return None


RuntimeStruct = Annotated[dict[str, typing.Any], BeforeValidator(_runtime_struct)]


class RuntimeLayer(Message):
    """One layer of bootstrap `layered_runtime`; later layers override earlier ones."""

    name: Str = Field(min_length=1)
    static_layer: RuntimeStruct | None = None
    disk_layer: RuntimeDiskLayer | None = None
    admin_layer: RuntimeAdminLayer | None = None
    # RTDS needs an xDS management server; podproxy has no xDS client.
    rtds_layer: typing.Any = None

    @field_validator("rtds_layer")
    @classmethod
    def _no_rtds(cls, value: object) -> object:
        if value is not None:
            raise PydanticCustomError(
                "unsupported",
                "rtds_layer needs an xDS management server (RTDS), which podproxy does not "
                "have; use static_layer, disk_layer or admin_layer",
            )
        return value

    @model_validator(mode="after")
    def _one_layer(self) -> RuntimeLayer:
        _one_of(self, ("static_layer", "disk_layer", "admin_layer", "rtds_layer"))
        return self


class LayeredRuntime(Message):
    layers: tuple[RuntimeLayer, ...] = ()


class Bootstrap(Message):
    UNSUPPORTED = _names(
        """
        node_context_params dynamic_resources cluster_manager hds_config flags_path
        stats_sinks deferred_stat_options stats_config stats_flush_interval
        stats_flush_on_admin stats_eviction_interval watchdog watchdogs tracing
        overload_manager enable_dispatcher_stats header_prefix
        stats_server_version_override use_tcp_for_dns_lookups dns_resolution_config
        typed_dns_resolver_config bootstrap_extensions fatal_actions config_sources
        default_config_source default_socket_interface certificate_provider_instances
        inline_headers perf_tracing_file_path default_regex_engine xds_delegate_extension
        xds_config_tracker_extension listener_manager application_log_config
        grpc_async_client_manager_config memory_allocator_manager
        """
    )
    static_resources: StaticResources = StaticResources()
    admin: Admin | None = None
    node: Node = Node()
    # None (absent) and no layers differ in Envoy: see podproxy.runtime.
    layered_runtime: LayeredRuntime | None = None


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- introspection, for the code that walks raw mappings ------------------------------------


def message_in(annotation: object) -> type[Message] | None:
    """The model a field's annotation holds, through `| None`, `Annotated` and tuples."""
    if isinstance(annotation, type) and issubclass(annotation, Message):
        return annotation
    if typing.get_origin(annotation) is dict:
        return message_in(typing.get_args(annotation)[1])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated, tuple):
        for arg in typing.get_args(annotation):
            found = message_in(arg)
            if found is not None:
                return found
    return None


def is_repeated(annotation: object) -> bool:
    """Whether a field is repeated in Envoy's proto: a `tuple[X, ...]`, maybe `Annotated`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return is_repeated(typing.get_args(annotation)[0])
    return origin is tuple


# Access-log models name messages defined further down (DataSource, HeaderMatcher) and each
# other (and_filter / or_filter hold filters): resolve them now that all exist.
_model: type[Message]
for _model in (SubstitutionFormatString, AndFilter, OrFilter, HeaderFilter, AccessLogFilter):
    _model.model_rebuild()
for _model in (AccessLog, Admin, HttpConnectionManager, Bootstrap):
    _model.model_rebuild(force=True)
