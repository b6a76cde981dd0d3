"""Route table: virtual host selection by authority and route matching, as Envoy orders them."""

from __future__ import annotations

from types import SimpleNamespace as NS

from podproxy.router.routes import RouteTable, VirtualHost, build_route_table, header_predicate


def match(
    prefix: str | None = None, path: str | None = None, regex: str | None = None, **kw: object
) -> NS:
    return NS(
        prefix=prefix,
        path=path,
        safe_regex=NS(regex=regex) if regex else None,
        case_sensitive=kw.get("case_sensitive", True),
        headers=kw.get("headers", ()),
    )


def action(cluster: str, **kw: object) -> NS:
    return NS(
        cluster=cluster,
        host_rewrite_literal=kw.get("host_rewrite_literal"),
        auto_host_rewrite=False,
        prefix_rewrite=kw.get("prefix_rewrite"),
        timeout=15.0,
        idle_timeout=None,
        cluster_not_found_response_code=None,
    )


def route(m: NS, a: NS) -> NS:
    return NS(name=None, match=m, route=a, direct_response=None)


def table(*vhosts: tuple[list[str], list[NS]]) -> RouteTable:
    return build_route_table(
        NS(
            virtual_hosts=[
                NS(name=f"vh{i}", domains=domains, routes=routes)
                for i, (domains, routes) in enumerate(vhosts)
            ]
        )
    )


def test_domain_precedence_exact_suffix_prefix_catch_all() -> None:
    t = table(
        (["*"], [route(match("/"), action("default"))]),
        (["api.example.com"], [route(match("/"), action("exact"))]),
        (["*.example.com"], [route(match("/"), action("suffix"))]),
        (["*.b.example.com"], [route(match("/"), action("longer-suffix"))]),
        (["api.*"], [route(match("/"), action("prefix"))]),
    )

    def cluster(authority: bytes) -> str | None:
        r = t.route(authority, b"/", [])
        return r.cluster if r else None

    assert cluster(b"API.example.com") == "exact"
    assert cluster(b"x.example.com") == "suffix"
    assert cluster(b"a.b.example.com") == "longer-suffix"
    assert cluster(b"api.other.org") == "prefix"
    assert cluster(b"elsewhere") == "default"


def test_no_virtual_host_means_no_route() -> None:
    t = table((["only.example.com"], [route(match("/"), action("c"))]))
    assert t.route(b"other", b"/", []) is None


def test_first_matching_route_wins_and_query_is_ignored() -> None:
    t = table(
        (
            ["*"],
            [
                route(match(path="/exact"), action("exact")),
                route(match(regex="/re/[0-9]+"), action("regex")),
                route(match("/api", case_sensitive=False), action("api")),
                route(match("/"), action("rest")),
            ],
        )
    )

    def cluster(target: bytes) -> str | None:
        r = t.route(b"h", target, [])
        return r.cluster if r else None

    assert cluster(b"/exact?x=1") == "exact"
    assert cluster(b"/exact/more") == "rest"
    assert cluster(b"/re/42") == "regex"
    assert cluster(b"/re/42x") == "rest"  # safe_regex must match the whole path
    assert cluster(b"/API/v1") == "api"


def test_header_matchers() -> None:
    exact = header_predicate(NS(name="X-Env", exact_match="prod", invert_match=False))
    assert exact([(b"x-env", b"prod")]) and not exact([(b"x-env", b"dev")]) and not exact([])
    present = header_predicate(NS(name="x-debug", present_match=True))
    assert present([(b"x-debug", b"")]) and not present([])
    inverted = header_predicate(NS(name="x-env", exact_match="prod", invert_match=True))
    assert inverted([(b"x-env", b"dev")]) and not inverted([(b"x-env", b"prod")])
    sm = header_predicate(
        NS(name="x-env", string_match=NS(prefix="PR", ignore_case=True), invert_match=False)
    )
    assert sm([(b"x-env", b"production")])


def test_route_with_header_match_falls_through() -> None:
    hdr = NS(name="x-canary", exact_match="1", invert_match=False)
    t = table(
        (
            ["*"],
            [
                route(match("/", headers=[hdr]), action("canary")),
                route(match("/"), action("stable")),
            ],
        )
    )
    assert t.route(b"h", b"/", [(b"x-canary", b"1")]).cluster == "canary"  # type: ignore[union-attr]
    assert t.route(b"h", b"/", []).cluster == "stable"  # type: ignore[union-attr]


def test_virtual_host_repr_free_lookup() -> None:
    vh = VirtualHost("v", ())
    assert vh.route(b"/", b"/", []) is None
