"""Access-log filters: each kind, built from typed config, over hand-made streams."""

from __future__ import annotations

import random
from typing import Any

from info import Info

from podproxy.access_log.filters import DefaultRuntime, build_filter
from podproxy.config.schema import AccessLogFilter


def flt(cfg: dict[str, Any], runtime: Any = None) -> Any:
    model = AccessLogFilter.model_validate(cfg)
    return build_filter(model, runtime or DefaultRuntime(), random.Random(7))


def cmp(op: str, value: int) -> dict[str, Any]:
    return {"comparison": {"op": op, "value": {"default_value": value, "runtime_key": "k"}}}


def test_status_code() -> None:
    ge = flt({"status_code_filter": cmp("GE", 500)})
    assert ge(Info(status=503)) and not ge(Info(status=200))
    assert flt({"status_code_filter": cmp("EQ", 0)})(Info())  # no response: code 0
    assert flt({"status_code_filter": cmp("NE", 200)})(Info(status=404))
    assert flt({"status_code_filter": cmp("LE", 299)})(Info(status=204))


def test_duration() -> None:
    slow = flt({"duration_filter": cmp("GE", 100)})
    assert slow(Info(start=1.0, response_end=1.25))
    assert not slow(Info(start=1.0, response_end=1.05))


def test_and_or_not_health_check() -> None:
    both = flt(
        {
            "and_filter": {
                "filters": [{"status_code_filter": cmp("GE", 400)}, {"not_health_check_filter": {}}]
            }
        }
    )
    assert both(Info(status=404)) and not both(Info(status=200))
    either = flt(
        {
            "or_filter": {
                "filters": [
                    {"status_code_filter": cmp("EQ", 200)},
                    {"status_code_filter": cmp("EQ", 404)},
                ]
            }
        }
    )
    assert either(Info(status=404)) and not either(Info(status=500))


def test_header_filter_sees_pseudo_headers() -> None:
    post = flt({"header_filter": {"header": {"name": ":method", "exact_match": "POST"}}})
    assert post(Info(method=b"POST")) and not post(Info())
    ua = flt({"header_filter": {"header": {"name": "user-agent", "prefix_match": "curl"}}})
    assert ua(Info(request_headers=[(b"user-agent", b"curl/8")])) and not ua(Info())


def test_response_flag_filter() -> None:
    any_flag = flt({"response_flag_filter": {}})
    assert any_flag(Info(flags="UH")) and not any_flag(Info())
    uf = flt({"response_flag_filter": {"flags": ["UF", "UT"]}})
    assert uf(Info(flags="UF,URX")) and not uf(Info(flags="UH"))


def test_grpc_status_filter() -> None:
    unavailable = flt({"grpc_status_filter": {"statuses": ["UNAVAILABLE"]}})
    assert unavailable(Info(response_trailers=[(b"grpc-status", b"14")]))
    assert unavailable(Info(status=503))  # no grpc-status: mapped from the HTTP status
    assert not unavailable(Info(status=200))
    excluded = flt({"grpc_status_filter": {"statuses": ["OK"], "exclude": True}})
    assert excluded(Info(response_headers=[(b"grpc-status", b"2")]))


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    def feature_enabled(self, key: str, numerator: int, denominator: int, value: int) -> bool:
        self.calls.append((key, numerator, denominator, value))
        return DefaultRuntime().feature_enabled(key, numerator, denominator, value)


def test_runtime_filter_keys_on_the_request_id() -> None:
    rt = Recording()
    sample = flt(
        {
            "runtime_filter": {
                "runtime_key": "log.sample",
                "percent_sampled": {"numerator": 5, "denominator": "TEN_THOUSAND"},
            }
        },
        rt,
    )
    rid = b"8d9b1f3e-1c2d-4c4e-9f0a-5b6c00002713"
    assert sample(Info(request_id=rid))  # last 8 hex digits: 10003 % 10000 = 3 < 5
    assert rt.calls == [("log.sample", 5, 10_000, 0x2713)]
    independent = flt(
        {"runtime_filter": {"runtime_key": "k", "use_independent_randomness": True}}, rt
    )
    assert not independent(Info(request_id=rid))  # default percent_sampled: 0%
    assert rt.calls[-1][3] != 0x2713
