//! Host and path -> route (SPEC §2 "Routing"). Pure: no I/O, built once per configuration.
//!
//! The most specific host class that has routes for the request's host is chosen — an exact
//! host, then the longest matching `*.suffix`, then `*` — and within that class only, the
//! longest path prefix on segment boundaries. No match inside the chosen class is a 404: a less
//! specific class is never consulted, so adding a host-specific route cannot silently leak that
//! host's unmatched paths to the catch-all.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::{HostPattern, RouteConfig};

/// The configured routes indexed by host class, for cheap per-request lookups.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    routes: Vec<RouteConfig>,
    /// Lower-cased host name (IPv6 without brackets) -> route indices in file order.
    exact: HashMap<String, Vec<usize>>,
    /// `.suffix` -> route indices; longest suffix first, so the first match is the most specific.
    suffix: Vec<(String, Vec<usize>)>,
    /// `*` routes in file order.
    any: Vec<usize>,
}

impl RouteTable {
    /// Indexes `routes`; indices returned by [`RouteTable::find`] refer to this slice.
    pub(crate) fn new(routes: &[RouteConfig]) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut suffix: Vec<(String, Vec<usize>)> = Vec::new();
        let mut any = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.host {
                HostPattern::Any => any.push(i),
                HostPattern::Exact(h) => {
                    exact.entry(host_name(h).into_owned()).or_default().push(i)
                }
                HostPattern::Suffix(s) => {
                    let mut s = s.to_ascii_lowercase();
                    if !s.starts_with('.') {
                        s.insert(0, '.');
                    }
                    match suffix.iter_mut().find(|(have, _)| *have == s) {
                        Some((_, list)) => list.push(i),
                        None => suffix.push((s, vec![i])),
                    }
                }
            }
        }
        // Stable: equal lengths cannot both match one host unless equal, and equal ones merged.
        suffix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        RouteTable {
            routes: routes.to_vec(),
            exact,
            suffix,
            any,
        }
    }

    /// The route for a request. `host` is the `Host` header or h2 `:authority` as received (port
    /// ignored, case-insensitive, `[v6]:port` understood); `path_and_query` is the request
    /// target in origin form. Among equally long prefixes the first in file order wins.
    pub(crate) fn find(&self, host: &str, path_and_query: &str) -> Option<&RouteConfig> {
        let host = host_name(host);
        let class: &[usize] = if let Some(list) = self.exact.get(host.as_ref()) {
            list
        } else if let Some((_, list)) = self.suffix.iter().find(|(s, _)| host.ends_with(s.as_str()))
        {
            list
        } else {
            &self.any
        };
        let path = path_and_query
            .split_once('?')
            .map_or(path_and_query, |(p, _)| p);
        let mut best: Option<&RouteConfig> = None;
        for r in class.iter().filter_map(|&i| self.routes.get(i)) {
            let longer = best.is_none_or(|b| r.path.len() > b.path.len());
            if longer && path_matches(&r.path, path) {
                best = Some(r);
            }
        }
        best
    }
}

/// How a tunnel was routed, kept with an inspected tunnel so that a reload can tell whether its
/// route still sends it where it went (SPEC §9 "Polite ending").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoutedTunnel {
    /// The route's identity: its host pattern and path, as in the duplicate-route rule.
    host: HostPattern,
    path: String,
    via: Via,
    /// The upstream `via` mapped to.
    upstream: String,
}

/// Which of its route's mappings a tunnel took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Via {
    /// A `[[route.subprotocol]]` of this name (case-sensitive, RFC 6455 §4.2.2).
    Subprotocol(String),
    /// The route's `fallback`.
    Fallback,
}

impl RoutedTunnel {
    /// A tunnel that `route` sent through `via` to `upstream`.
    pub(crate) fn new(route: &RouteConfig, via: Via, upstream: &str) -> Self {
        RoutedTunnel {
            host: route.host.clone(),
            path: route.path.clone(),
            via,
            upstream: upstream.to_owned(),
        }
    }
}

/// Whether `routes` (a reloaded configuration's) still has the tunnel's route — the same host
/// pattern and path — and maps the tunnel's subprotocol (or, for a fallback tunnel, its fallback) to the
/// same upstream name. A tunnel for which this is false ends politely (SPEC §9).
pub(crate) fn still_routed(tunnel: &RoutedTunnel, routes: &[RouteConfig]) -> bool {
    let Some(route) = routes
        .iter()
        .find(|r| r.host == tunnel.host && r.path == tunnel.path)
    else {
        return false;
    };
    let upstream = match &tunnel.via {
        Via::Subprotocol(name) => route
            .subprotocols
            .iter()
            .find(|s| s.name == *name)
            .map(|s| &s.upstream),
        Via::Fallback => route.fallback.as_ref(),
    };
    upstream == Some(&tunnel.upstream)
}

/// The host name a `Host` value names: port dropped, IPv6 brackets removed, one trailing dot
/// (the DNS root) dropped, ASCII lower-cased (RFC 9110 §4.2.3: the host is case-insensitive).
pub(crate) fn host_name(host: &str) -> Cow<'_, str> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(v6, _)| v6)
    } else if host.bytes().filter(|b| *b == b':').count() == 1 {
        host.split_once(':').map_or(host, |(h, _)| h)
    } else {
        // No port, or a bare IPv6 literal (more than one colon) which has no port.
        host
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// SPEC §2: a prefix matches on segment boundaries. `/chat` matches `/chat`, `/chat/` and
/// `/chat/x` but not `/chatter`; `/chat/` matches `/chat/` and below but not `/chat`; `/`
/// matches every target (even `*`).
fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Select;

    fn route(host: HostPattern, path: &str, fallback: &str) -> RouteConfig {
        RouteConfig {
            host,
            path: path.to_string(),
            origins: None,
            select: Select::Client,
            fallback: Some(fallback.to_string()),
            http: None,
            upgrades: vec![],
            subprotocols: vec![],
            inspect: None,
            max_lifetime: None,
            max_lifetime_jitter: std::time::Duration::ZERO,
            auth: None,
        }
    }

    /// The reload rule of SPEC §9, one row per way a route can change under an open tunnel.
    #[test]
    fn still_routed_rows() {
        use crate::config::SubprotocolRoute;
        let sub = |name: &str, up: &str| SubprotocolRoute {
            name: name.into(),
            upstream: up.into(),
        };
        let base = RouteConfig {
            subprotocols: vec![sub("chat.v1", "app"), sub("news.v1", "app")],
            ..route(HostPattern::Any, "/sub", "fb")
        };
        let with = |f: &dyn Fn(&mut RouteConfig)| {
            let mut r = base.clone();
            f(&mut r);
            vec![route(HostPattern::Any, "/keep", "app"), r]
        };
        let chat = RoutedTunnel::new(&base, Via::Subprotocol("chat.v1".into()), "app");
        let news = RoutedTunnel::new(&base, Via::Subprotocol("news.v1".into()), "app");
        let fallback = RoutedTunnel::new(&base, Via::Fallback, "fb");
        let same = with(&|_| {});
        let gone = vec![route(HostPattern::Any, "/keep", "app")];
        let moved_chat = with(&|r| r.subprotocols[0].upstream = "app2".into());
        let dropped_chat = with(&|r| {
            r.subprotocols.remove(0);
        });
        let renamed_chat = with(&|r| r.subprotocols[0].name = "Chat.v1".into());
        let moved_fallback = with(&|r| r.fallback = Some("other".into()));
        let no_fallback = with(&|r| r.fallback = None);
        let other_host = with(&|r| r.host = HostPattern::Exact("a.example".into()));
        let other_path = with(&|r| r.path = "/sub/".into());
        let more_keys = with(&|r| {
            r.origins = Some(vec!["https://x.example".into()]);
            r.max_lifetime = Some(std::time::Duration::from_secs(5));
            r.subprotocols.push(sub("extra", "app3"));
        });
        #[rustfmt::skip]
        let rows: &[(&str, &RoutedTunnel, &[RouteConfig], bool)] = &[
            ("unchanged", &chat, &same, true),
            ("route removed", &chat, &gone, false),
            ("subprotocol remapped", &chat, &moved_chat, false),
            ("other subprotocol remapped", &news, &moved_chat, true),
            ("subprotocol unmapped", &chat, &dropped_chat, false),
            ("subprotocol names are case-sensitive", &chat, &renamed_chat, false),
            ("fallback unchanged", &fallback, &same, true),
            ("fallback remapped", &fallback, &moved_fallback, false),
            ("fallback removed", &fallback, &no_fallback, false),
            ("fallback untouched by a subprotocol change", &fallback, &moved_chat, true),
            ("same path, other host", &chat, &other_host, false),
            ("same host, other path", &chat, &other_path, false),
            ("other keys changed", &chat, &more_keys, true),
        ];
        for (name, tunnel, routes, want) in rows {
            assert_eq!(still_routed(tunnel, routes), *want, "{name}");
        }
    }

    /// negotiation.py ROUTING.
    fn routing() -> RouteTable {
        RouteTable::new(&[
            route(HostPattern::Any, "/", "root"),
            route(HostPattern::Any, "/api", "api"),
            route(HostPattern::Any, "/api/ws", "apiws"),
            route(HostPattern::Any, "/chat", "chat"),
            route(HostPattern::Any, "/ws/deep", "deep"),
            route(
                HostPattern::Exact("chat.example.com".into()),
                "/ws",
                "exact",
            ),
            route(HostPattern::Suffix(".example.com".into()), "/ws", "wild"),
        ])
    }

    fn upstream_of(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        t.find(host, path).and_then(|r| r.fallback.clone())
    }

    #[test]
    fn acceptance_route_rows() {
        // negotiation.py ROUTE_ROWS: (host, path, upstream)
        let rows = [
            ("x.test", "/api/ws/room?id=1", "apiws"),
            ("x.test", "/api/other", "api"),
            ("x.test", "/elsewhere", "root"),
            ("chat.example.com", "/ws", "exact"),
            ("eu.example.com", "/ws", "wild"),
            ("chat.example.com:443", "/ws", "exact"),
            ("CHAT.Example.COM", "/ws", "exact"),
            ("Eu.EXAMPLE.com:8443", "/ws", "wild"),
            ("chat.example.com", "/ws/deep/x", "exact"),
            ("eu.example.com", "/ws/deep", "wild"),
            ("x.test", "/ws/deep/x", "deep"),
            ("x.test", "/chat", "chat"),
            ("x.test", "/chat/", "chat"),
            ("x.test", "/chat/x", "chat"),
            ("x.test", "/chat?x", "chat"),
            ("x.test", "/chatter", "root"),
            ("x.test", "/api/wsx", "api"),
        ];
        let t = routing();
        for (host, path, want) in rows {
            assert_eq!(
                upstream_of(&t, host, path).as_deref(),
                Some(want),
                "{host} {path}"
            );
        }
    }

    #[test]
    fn chosen_class_never_falls_back() {
        let t = routing();
        // Exact host and *.example.com have routes only for /ws: other paths are 404 there,
        // even though "*" has "/".
        assert_eq!(upstream_of(&t, "chat.example.com", "/elsewhere"), None);
        assert_eq!(upstream_of(&t, "eu.example.com", "/api"), None);
        // "*.example.com" does not match "example.com" itself: that host uses "*".
        assert_eq!(
            upstream_of(&t, "example.com", "/api").as_deref(),
            Some("api")
        );
    }

    #[test]
    fn no_catch_all_means_404_for_other_hosts() {
        let t = RouteTable::new(&[route(HostPattern::Exact("only.example".into()), "/", "a")]);
        assert_eq!(upstream_of(&t, "only.example", "/x").as_deref(), Some("a"));
        assert_eq!(upstream_of(&t, "other.example", "/x"), None);
        assert_eq!(upstream_of(&t, "", "/x"), None);
    }

    #[test]
    fn longest_matching_suffix_is_most_specific() {
        let t = RouteTable::new(&[
            route(HostPattern::Suffix(".example.com".into()), "/", "short"),
            route(HostPattern::Suffix(".eu.example.com".into()), "/ws", "long"),
        ]);
        assert_eq!(
            upstream_of(&t, "a.eu.example.com", "/ws").as_deref(),
            Some("long")
        );
        // The longer suffix's class is chosen and has no "/x": no fallback to ".example.com".
        assert_eq!(upstream_of(&t, "a.eu.example.com", "/x"), None);
        assert_eq!(
            upstream_of(&t, "eu.example.com", "/x").as_deref(),
            Some("short")
        );
    }

    #[test]
    fn trailing_slash_prefix_and_root() {
        let t = RouteTable::new(&[route(HostPattern::Any, "/chat/", "slash")]);
        assert_eq!(upstream_of(&t, "h", "/chat/").as_deref(), Some("slash"));
        assert_eq!(upstream_of(&t, "h", "/chat/x?y").as_deref(), Some("slash"));
        assert_eq!(upstream_of(&t, "h", "/chat"), None);
        assert_eq!(upstream_of(&t, "h", "/chat?x"), None);
        let root = RouteTable::new(&[route(HostPattern::Any, "/", "root")]);
        for target in ["/", "/a/b?c", "*", ""] {
            assert_eq!(
                upstream_of(&root, "h", target).as_deref(),
                Some("root"),
                "{target}"
            );
        }
    }

    #[test]
    fn host_forms() {
        let t = RouteTable::new(&[
            route(HostPattern::Exact("::1".into()), "/", "v6"),
            route(HostPattern::Exact("[fe80::1]".into()), "/", "v6b"),
            route(HostPattern::Exact("127.0.0.1".into()), "/", "v4"),
            route(HostPattern::Exact("a.example".into()), "/", "dns"),
        ]);
        let rows = [
            ("[::1]:8443", Some("v6")),
            ("[::1]", Some("v6")),
            ("::1", Some("v6")),
            ("[FE80::1]:1", Some("v6b")),
            ("127.0.0.1:80", Some("v4")),
            ("A.Example.:8080", Some("dns")),
            ("a.example.", Some("dns")),
            ("b.example", None),
        ];
        for (host, want) in rows {
            assert_eq!(upstream_of(&t, host, "/").as_deref(), want, "{host}");
        }
    }

    #[test]
    fn equal_routes_first_in_file_order_wins() {
        let t = RouteTable::new(&[
            route(HostPattern::Any, "/a", "first"),
            route(HostPattern::Any, "/a", "second"),
        ]);
        let found = t.find("h", "/a").and_then(|r| r.fallback.as_deref());
        assert_eq!(found, Some("first"));
    }
}
