"""Routing breadth (issue 10 §4): header and query matchers, runtime_fraction, weighted
clusters, cluster_header, redirects and header mutations, compiled from typed config.

The expected values are Envoy 1.40's, as observed side by side (tests/integration/
test_envoy_routing_breadth.py runs the same cases against Envoy itself).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from integration.test_proxy_http import bootstrap, cluster

from podproxy.config.loader import load
from podproxy.config.schema import RouteConfiguration
from podproxy.errors import ConfigErrors
from podproxy.router.routes import DefaultFractionRuntime, RouteTable, build_route_table


def rc(routes: list[dict[str, Any]], **extra: Any) -> RouteConfiguration:
    vh = {"name": "v", "domains": ["*"], "routes": routes, **extra.pop("vh", {})}
    return RouteConfiguration.model_validate({"name": "r", "virtual_hosts": [vh], **extra})


def answer(name: str, match: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "match": match, "direct_response": {"status": 200}}


def matched(table: RouteTable, target: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
    r = table.route(b"app", target, [(b"host", b"app"), *headers])
    return r.name if r is not None else None


def test_header_matchers_as_envoy_1_40() -> None:
    t = build_route_table(
        rc(
            [
                answer("one", {"prefix": "/one", "headers": [{"name": "x-a", "exact_match": "1"}]}),
                answer(
                    "inv",
                    {
                        "prefix": "/inv",
                        "headers": [
                            {"name": "x-a", "string_match": {"exact": "1"}, "invert_match": True}
                        ],
                    },
                ),
                answer(
                    "absent",
                    {"prefix": "/absent", "headers": [{"name": "x-a", "present_match": False}]},
                ),
                answer(
                    "empty",
                    {
                        "prefix": "/empty",
                        "headers": [
                            {
                                "name": "x-a",
                                "string_match": {"exact": ""},
                                "treat_missing_header_as_empty": True,
                            }
                        ],
                    },
                ),
                answer(
                    "range",
                    {
                        "prefix": "/range",
                        "headers": [{"name": "x-a", "range_match": {"start": -5, "end": 10}}],
                    },
                ),
                answer("any", {"prefix": "/any", "headers": [{"name": "x-a", "exact_match": ""}]}),
                answer(
                    "auth",
                    {"prefix": "/auth", "headers": [{"name": ":authority", "exact_match": "app"}]},
                ),
                answer("rest", {"prefix": "/"}),
            ]
        )
    )
    two = [(b"x-a", b"1"), (b"x-a", b"2")]
    # A repeated header matches when any one value does, never the joined "1,2".
    assert matched(t, b"/one", two) == "one"
    assert matched(t, b"/one", [(b"x-a", b"2"), (b"x-a", b"1")]) == "one"
    assert matched(t, b"/one", [(b"x-a", b"1,2")]) == "rest"
    # Inverted: only when no value matches; a missing header never matches.
    assert matched(t, b"/inv", two) == "rest"
    assert matched(t, b"/inv", [(b"x-a", b"2"), (b"x-a", b"3")]) == "inv"
    assert matched(t, b"/inv", []) == "rest"
    assert matched(t, b"/absent", []) == "absent"
    assert matched(t, b"/absent", [(b"x-a", b"")]) == "rest"
    assert matched(t, b"/empty", []) == "empty"
    assert matched(t, b"/empty", [(b"x-a", b"")]) == "empty"
    assert matched(t, b"/empty", [(b"x-a", b"x")]) == "rest"
    for value, hit in [
        (b"-5", True),
        (b"9", True),
        (b"10", False),
        (b" 3", True),
        (b"+3", True),
        (b"3 ", True),
        (b"0x3", False),
        (b"1_0", False),
        (b"", False),
    ]:
        assert (matched(t, b"/range", [(b"x-a", value)]) == "range") is hit, value
    assert matched(t, b"/any", [(b"x-a", b"zz")]) == "any"
    assert matched(t, b"/any", []) == "rest"
    assert matched(t, b"/auth", []) == "auth"


def test_query_parameters_first_value_not_decoded() -> None:
    t = build_route_table(
        rc(
            [
                answer(
                    "q",
                    {
                        "prefix": "/q",
                        "query_parameters": [{"name": "a", "string_match": {"exact": "x%20y"}}],
                    },
                ),
                answer(
                    "p",
                    {"prefix": "/q", "query_parameters": [{"name": "b", "present_match": True}]},
                ),
                answer("rest", {"prefix": "/"}),
            ]
        )
    )
    assert matched(t, b"/q?a=x%20y", []) == "q"
    assert matched(t, b"/q?a=x%20y&a=z", []) == "q"
    assert matched(t, b"/q?a=z&a=x%20y", []) == "rest"  # only the first value counts
    assert matched(t, b"/q?a=x+y", []) == "rest"
    assert matched(t, b"/q?b", []) == "p"
    assert matched(t, b"/q?b=", []) == "p"
    assert matched(t, b"/q", []) == "rest"


class RecordingRuntime:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    def feature_enabled(
        self, key: str, numerator: int, denominator: int, random_value: int
    ) -> bool:
        self.calls.append((key, numerator, denominator, random_value))
        return random_value % 2 == 0


def test_runtime_fraction_through_the_runtime_seam() -> None:
    config = rc(
        [
            answer(
                "canary",
                {
                    "prefix": "/",
                    "runtime_fraction": {
                        "default_value": {"numerator": 25, "denominator": "TEN_THOUSAND"},
                        "runtime_key": "routing.canary",
                    },
                },
            ),
            answer("rest", {"prefix": "/"}),
        ]
    )
    runtime = RecordingRuntime()
    values = iter([4, 7])
    t = build_route_table(config, runtime=runtime, random_value=lambda: next(values))
    assert matched(t, b"/", []) == "canary"
    assert matched(t, b"/", []) == "rest"
    assert runtime.calls == [("routing.canary", 25, 10_000, 4), ("routing.canary", 25, 10_000, 7)]
    # The default runtime: random_value % denominator < numerator.
    assert DefaultFractionRuntime().feature_enabled("k", 25, 10_000, 10_024)
    assert not DefaultFractionRuntime().feature_enabled("k", 25, 10_000, 10_025)
    seeded = random.Random(7)
    t = build_route_table(config, random_value=lambda: seeded.getrandbits(64))
    hits = sum(matched(t, b"/", []) == "canary" for _ in range(20_000))
    assert 20 <= hits <= 85  # 0.25 % of 20,000 is 50


def h(key: str, value: str, **kw: Any) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, **kw}


def weighted(**extra: Any) -> dict[str, Any]:
    return {
        "name": "w",
        "match": {"prefix": "/"},
        "route": {
            "weighted_clusters": {
                "clusters": [
                    {"name": "a", "weight": 30, "request_headers_to_add": [h("x-cl", "a")]},
                    {"name": "b", "weight": 70, "request_headers_to_add": [h("x-cl", "b")]},
                    {"name": "never", "weight": 0},
                ],
                "total_weight": 5,  # deprecated: Envoy 1.40 uses the sum
            }
        },
        **extra,
    }


def test_weighted_clusters_distribution_and_entries() -> None:
    seeded = random.Random(11)
    t = build_route_table(rc([weighted()]), random_value=lambda: seeded.getrandbits(64))
    route = t.route(b"app", b"/", [])
    assert route is not None and route.cluster is None
    counts: Counter[str | None] = Counter()
    for _ in range(10_000):
        entry, name = route.choose_cluster([])
        counts[name] += 1
        assert entry.cluster == name
    assert counts["never"] == 0
    assert 2_700 <= counts["a"] <= 3_300 and counts["a"] + counts["b"] == 10_000
    # Each entry carries its own cluster's header mutations, ahead of the route's.
    values = iter([29, 30])
    t = build_route_table(rc([weighted()]), random_value=lambda: next(values))
    route = t.route(b"app", b"/", [])
    assert route is not None
    for want in (b"a", b"b"):
        entry, _ = route.choose_cluster([])
        assert entry.request_mutation is not None
        assert entry.request_mutation.apply_to_lines(b"") == b"x-cl: " + want + b"\r\n"


def test_cluster_header_first_value() -> None:
    t = build_route_table(
        rc([{"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster"}}])
    )
    route = t.route(b"app", b"/", [])
    assert route is not None and route.cluster is None
    assert route.choose_cluster([(b"x-cluster", b"b"), (b"x-cluster", b"a")])[1] == "b"
    assert route.choose_cluster([])[1] is None
    assert route.choose_cluster([(b"x-cluster", b"")])[1] is None


def test_plain_route_has_nothing_to_do_per_request() -> None:
    t = build_route_table(rc([{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]))
    route = t.route(b"app", b"/", [])
    assert route is not None
    assert (route.cluster, route.weighted, route.request_mutation, route.response_mutation) == (
        "a",
        None,
        None,
        None,
    )


MUTATION_LEVELS = {
    "rc": {
        "request_headers_to_add": [
            h("x-o", "rc", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
            h("x-p", "rc"),
        ]
    },
    "vh": {
        "request_headers_to_add": [
            h("x-o", "vh", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
            h("x-p", "vh"),
        ]
    },
    "route": {
        "request_headers_to_add": [
            h("x-o", "route", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
            h("x-p", "route"),
        ]
    },
}


@pytest.mark.parametrize(
    ("most_specific_wins", "want"),
    [
        (False, b"x-cl: a\r\nx-p: route\r\nx-p: vh\r\nx-o: rc\r\nx-p: rc\r\n"),
        (True, b"x-cl: a\r\nx-p: rc\r\nx-p: vh\r\nx-o: route\r\nx-p: route\r\n"),
    ],
)
def test_header_mutation_order(most_specific_wins: bool, want: bytes) -> None:
    config = rc(
        [weighted(**MUTATION_LEVELS["route"])],
        vh=MUTATION_LEVELS["vh"],
        most_specific_header_mutations_wins=most_specific_wins,
        **MUTATION_LEVELS["rc"],
    )
    t = build_route_table(config, random_value=lambda: 0)
    route = t.route(b"app", b"/", [])
    assert route is not None
    entry, _ = route.choose_cluster([])
    assert entry.request_mutation is not None
    assert entry.request_mutation.apply_to_lines(b"") == want


def test_append_actions_and_keep_empty_value() -> None:
    config = rc(
        [
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "a"},
                "request_headers_to_remove": ["X-Gone"],
                "request_headers_to_add": [
                    h("x-app", "2"),
                    h("x-absent", "new", append_action="ADD_IF_ABSENT"),
                    h("x-here", "new", append_action="ADD_IF_ABSENT"),
                    h("x-over", "new", append_action="OVERWRITE_IF_EXISTS"),
                    h("x-nothing", "new", append_action="OVERWRITE_IF_EXISTS"),
                    h("x-legacy", "new", append=False),
                    h("x-empty", ""),
                    h("x-kept", "", keep_empty_value=True),
                    h("x-pct", "100%% sure"),
                ],
            }
        ]
    )
    route = build_route_table(config).route(b"app", b"/", [])
    assert route is not None and route.request_mutation is not None
    block = (
        b"x-app: 1\r\nx-gone: 1\r\nx-here: old\r\nx-over: old\r\n"
        b"x-legacy: old\r\nx-legacy: old2\r\n"
    )
    assert route.request_mutation.apply_to_lines(block) == (
        b"x-app: 1\r\nx-here: old\r\nx-over: new\r\nx-legacy: new\r\n"
        b"x-app: 2\r\nx-absent: new\r\nx-kept: \r\nx-pct: 100% sure\r\n"
    )


@pytest.mark.parametrize(
    ("redirect", "authority", "target", "location"),
    [
        ({"https_redirect": True}, b"app:8080", b"/a?q=1", b"https://app:8080/a?q=1"),
        ({"https_redirect": True}, b"[::1]:80", b"/a", b"https://[::1]/a"),
        ({"host_redirect": "new.test"}, b"app:8080", b"/a?q", b"http://new.test/a?q"),
        ({"port_redirect": 8443}, b"app:8080", b"/a", b"http://app:8443/a"),
        ({"port_redirect": 8443}, b"app", b"/a", b"http://app:8443/a"),
        ({"path_redirect": "/p?x=1", "strip_query": True}, b"app", b"/a?q=2", b"http://app/p?x=1"),
        ({"path_redirect": "/p"}, b"app", b"/a?q=1", b"http://app/p?q=1"),
        ({"prefix_rewrite": "/new/"}, b"app", b"/r/a/b?q", b"http://app/new/a/b?q"),
        (
            {"scheme_redirect": "https", "port_redirect": 443},
            b"app:8080",
            b"/a",
            b"https://app:443/a",
        ),
        ({"strip_query": True, "https_redirect": True}, b"app", b"/r/a?q=1", b"https://app/r/a"),
        (
            {"regex_rewrite": {"pattern": {"regex": "^/r/(.*)$"}, "substitution": "/s/\\1"}},
            b"app",
            b"/r/zz?q=3",
            b"http://app/s/zz?q=3",
        ),
    ],
)
def test_redirect_location(
    redirect: dict[str, Any], authority: bytes, target: bytes, location: bytes
) -> None:
    t = build_route_table(
        rc(
            [
                {
                    "match": {"prefix": "/r/" if "prefix_rewrite" in redirect else "/"},
                    "redirect": redirect,
                }
            ]
        )
    )
    route = t.route(authority, target, [])
    assert route is not None and route.redirect is not None
    assert route.redirect.location(authority, target, b"http") == location
    assert route.direct_status == 301


def load_routes(routes: list[dict[str, Any]]) -> None:
    load(config_yaml=bootstrap([cluster("a", [("127.0.1.1", 80)])], routes=routes))


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "a"},
                "request_headers_to_add": [h("host", "x")],
            },
            "request_headers_to_add[0].header.key: :-prefixed or host headers may not be modified",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "a"},
                "response_headers_to_remove": [":status"],
            },
            "response_headers_to_remove: :-prefixed or host headers may not be removed",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "a"},
                "request_headers_to_add": [h("x", "%REQUEST_DURATION%")],
            },
            'request_headers_to_add[0].header.value: "%REQUEST_DURATION%": '
            "%REQUEST_DURATION%: not supported in this field by podproxy yet",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "a"},
                "request_headers_to_add": [h("x", "1", append=True, append_action="ADD_IF_ABSENT")],
            },
            "Both append and append_action are set",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {
                        "clusters": [{"name": "a", "weight": 1}],
                        "runtime_key_prefix": "p",
                    }
                },
            },
            'route.weighted_clusters.runtime_key_prefix: "p": weights from the runtime',
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {"weighted_clusters": {"clusters": [{"name": "zz", "weight": 1}]}},
            },
            'route.weighted_clusters.clusters[0].name: unknown weighted cluster "zz"',
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {
                        "clusters": [{"name": "a", "cluster_header": "x", "weight": 1}]
                    }
                },
            },
            "Only one of name or cluster_header can be specified",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}},
            },
            "Sum of weights in the weighted_cluster must be greater than 0",
        ),
        (
            {
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {
                        "clusters": [{"name": "a", "weight": 1, "metadata_match": {}}]
                    }
                },
            },
            "clusters[0].metadata_match: Envoy field not supported by podproxy yet",
        ),
        (
            {
                "match": {"prefix": "/", "headers": [{"name": ":method", "exact_match": "GET"}]},
                "route": {"cluster": "a"},
            },
            "pseudo-header other than :authority",
        ),
    ],
)
def test_config_errors_name_the_field(route: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigErrors) as err:
        load_routes([route])
    assert message in str(err.value)


def test_literal_percent_and_raw_value_load() -> None:
    load_routes(
        [
            {
                "match": {"prefix": "/"},
                "route": {"cluster": "a"},
                "request_headers_to_add": [
                    h("x", "50%% off"),
                    {"header": {"key": "y", "raw_value": "YQ=="}},
                ],
            }
        ]
    )
