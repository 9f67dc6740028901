//! Host, path and method to route. The table is built once per config
//! generation, conflicts are rejected then, and the request path only looks
//! up.
//!
//! Precedence: exact host routes, then wildcard hosts (longest suffix first),
//! then routes for any host; within each, longer path prefixes first. The
//! first route whose prefix and method match wins. If routes match the path
//! but none the method, the answer is 405 with the methods they allow.

use std::collections::{BTreeSet, HashMap};

use http::Method;

use crate::config::{Problem, RouteConfig};

#[derive(Debug, Clone)]
struct Entry {
    prefix: String,
    /// Whether the prefix matches letter case exactly.
    case_sensitive: bool,
    methods: Methods,
    route: usize,
}

impl Entry {
    fn path_matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path, self.case_sensitive)
    }

    fn method_matches(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// Segment-aware prefix match: `/api` takes `/api` and `/api/...` but not
/// `/apix`; a prefix ending in `/` takes everything below it. Without
/// `case_sensitive`, ASCII letters match either case.
fn prefix_matches(prefix: &str, path: &str, case_sensitive: bool) -> bool {
    let head = path.as_bytes().get(..prefix.len());
    let starts = match head {
        Some(head) if case_sensitive => head == prefix.as_bytes(),
        Some(head) => head.eq_ignore_ascii_case(prefix.as_bytes()),
        None => false,
    };
    if !starts {
        return false;
    }
    let rest = &path.as_bytes()[prefix.len()..];
    prefix.ends_with('/') || rest.is_empty() || rest.starts_with(b"/")
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The index of the route in the config's `routes`.
    Route(usize),
    /// Routes match the path but not the method; these are the methods they
    /// allow, for the `Allow` header.
    MethodNotAllowed(String),
    /// No route matches.
    NotFound,
}

/// The routing table of one generation.
#[derive(Debug, Clone, Default)]
pub struct Router {
    exact: HashMap<String, Vec<Entry>>,
    wildcard: Vec<(String, Vec<Entry>)>,
    any: Vec<Entry>,
}

/// A route's methods; `None` is any method.
type Methods = Option<Vec<Method>>;

fn parse_methods(methods: &[String]) -> Methods {
    if methods.is_empty() {
        return None;
    }
    Some(
        methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect(),
    )
}

fn overlap(a: &Methods, b: &Methods) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

impl Router {
    /// Builds the table; two routes that would take exactly the same requests
    /// (same host, same prefix, overlapping methods) are a conflict.
    pub fn build(routes: &[RouteConfig]) -> Result<Self, Vec<Problem>> {
        let mut router = Router::default();
        let mut problems = Vec::new();
        // (host, prefix) -> the routes (index, methods) already taking it.
        let mut seen: HashMap<(String, String), Vec<(usize, Methods)>> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            let methods = parse_methods(&route.methods);
            let hosts: Vec<String> = if route.hosts.is_empty() {
                vec![String::new()]
            } else {
                route.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
            };
            for host in hosts {
                // Case-insensitive prefixes that differ only in case take
                // the same requests.
                let prefix_key = if route.case_sensitive {
                    route.path_prefix.clone()
                } else {
                    route.path_prefix.to_ascii_lowercase()
                };
                let key = (host.clone(), prefix_key);
                let earlier = seen.entry(key).or_default();
                if let Some((j, _)) = earlier.iter().find(|(_, m)| overlap(m, &methods)) {
                    problems.push(Problem {
                        key: format!("routes[{i}]"),
                        message: format!(
                            "takes the same requests as routes[{j}] (`{}`): same host{}, path_prefix `{}` and overlapping methods",
                            routes[*j].name,
                            if host.is_empty() { " (any)".to_owned() } else { format!(" `{host}`") },
                            route.path_prefix
                        ),
                    });
                    continue;
                }
                earlier.push((i, methods.clone()));
                let entry = Entry {
                    prefix: route.path_prefix.clone(),
                    case_sensitive: route.case_sensitive,
                    methods: methods.clone(),
                    route: i,
                };
                if host.is_empty() {
                    router.any.push(entry);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    match router.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, list)) => list.push(entry),
                        None => router.wildcard.push((suffix.to_owned(), vec![entry])),
                    }
                } else {
                    router.exact.entry(host).or_default().push(entry);
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let by_prefix = |list: &mut Vec<Entry>| {
            list.sort_by(|a, b| {
                b.prefix
                    .len()
                    .cmp(&a.prefix.len())
                    .then(a.route.cmp(&b.route))
            })
        };
        router.exact.values_mut().for_each(by_prefix);
        router.wildcard.iter_mut().for_each(|(_, l)| by_prefix(l));
        router
            .wildcard
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        by_prefix(&mut router.any);
        Ok(router)
    }

    /// Finds the route for a request. `host` is the Host header (a port and
    /// letter case are ignored).
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Match {
        let host = host.map(normalize_host).unwrap_or_default();
        let mut allowed: Option<BTreeSet<String>> = None;
        let tiers = self
            .exact
            .get(host.as_str())
            .into_iter()
            .chain(
                self.wildcard
                    .iter()
                    .filter(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, list)| list),
            )
            .chain(std::iter::once(&self.any));
        for list in tiers {
            for entry in list.iter().filter(|e| e.path_matches(path)) {
                if entry.method_matches(method) {
                    return Match::Route(entry.route);
                }
                let set = allowed.get_or_insert_with(BTreeSet::new);
                set.extend(entry.methods.iter().flatten().map(|m| m.to_string()));
            }
        }
        match allowed {
            Some(set) => Match::MethodNotAllowed(set.into_iter().collect::<Vec<_>>().join(", ")),
            None => Match::NotFound,
        }
    }
}

fn normalize_host(host: &str) -> String {
    let without_port = match host.rsplit_once(':') {
        // An IPv6 literal keeps its colons: `[::1]:8080`.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    without_port.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], prefix: &str, methods: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: prefix.into(),
            case_sensitive: true,
            methods: methods.iter().map(|s| s.to_string()).collect(),
            upstream: "u".into(),
            plugins: vec![],
            websocket: true,
            max_request_body_bytes: None,
            timeout_ms: None,
            upgrade_idle_timeout_ms: 300_000,
            upstream_timeout_ms: None,
            retries: None,
            metrics_consumer_label: false,
        }
    }

    #[test]
    fn longest_prefix_on_whole_segments() {
        let r = Router::build(&[route("root", &[], "/", &[]), route("api", &[], "/api", &[])])
            .expect("builds");
        assert_eq!(r.find(None, "/api", &Method::GET), Match::Route(1));
        assert_eq!(r.find(None, "/api/x", &Method::GET), Match::Route(1));
        assert_eq!(r.find(None, "/apix", &Method::GET), Match::Route(0));
    }

    #[test]
    fn a_case_insensitive_prefix_takes_any_letter_case_on_whole_segments() {
        let mut admin = route("admin", &[], "/Admin", &[]);
        admin.case_sensitive = false;
        let r = Router::build(&[route("root", &[], "/", &[]), admin.clone()]).expect("builds");
        for path in ["/admin", "/ADMIN/users", "/aDmIn/"] {
            assert_eq!(r.find(None, path, &Method::GET), Match::Route(1), "{path}");
        }
        assert_eq!(r.find(None, "/adminx", &Method::GET), Match::Route(0));
        // Case-sensitive by default.
        let r = Router::build(&[route("root", &[], "/", &[]), route("a", &[], "/Admin", &[])])
            .expect("builds");
        assert_eq!(r.find(None, "/admin", &Method::GET), Match::Route(0));
        // Two case-insensitive prefixes that differ only in case conflict.
        let mut other = admin.clone();
        other.path_prefix = "/ADMIN".into();
        assert!(Router::build(&[admin, other]).is_err());
    }

    #[test]
    fn exact_host_before_wildcard_before_any() {
        let r = Router::build(&[
            route("any", &[], "/", &[]),
            route("wild", &["*.example.com"], "/", &[]),
            route("exact", &["api.example.com"], "/", &[]),
        ])
        .expect("builds");
        assert_eq!(
            r.find(Some("API.example.com:8080"), "/", &Method::GET),
            Match::Route(2)
        );
        assert_eq!(
            r.find(Some("www.example.com"), "/", &Method::GET),
            Match::Route(1)
        );
        assert_eq!(
            r.find(Some("example.com"), "/", &Method::GET),
            Match::Route(0)
        );
        assert_eq!(r.find(None, "/", &Method::GET), Match::Route(0));
    }

    #[test]
    fn method_mismatch_is_405_with_allow() {
        let r = Router::build(&[
            route("read", &[], "/items", &["GET"]),
            route("write", &[], "/items", &["POST", "PUT"]),
        ])
        .expect("builds");
        assert_eq!(r.find(None, "/items", &Method::POST), Match::Route(1));
        assert_eq!(
            r.find(None, "/items/1", &Method::DELETE),
            Match::MethodNotAllowed("GET, POST, PUT".into())
        );
        assert_eq!(r.find(None, "/other", &Method::GET), Match::NotFound);
    }

    #[test]
    fn identical_routes_conflict() {
        let err = Router::build(&[
            route("a", &["x.com"], "/p", &["GET", "POST"]),
            route("b", &["x.com"], "/p", &["POST"]),
        ])
        .expect_err("conflict");
        assert_eq!(err[0].key, "routes[1]");
        assert!(
            err[0].message.contains("routes[0] (`a`)"),
            "{}",
            err[0].message
        );
    }

    #[test]
    fn ipv6_hosts_keep_their_colons() {
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("Example.com"), "example.com");
        let r = Router::build(&[route("v6", &["[::1]"], "/", &[])]).expect("builds");
        assert!(matches!(
            r.find(Some("[::1]:8080"), "/", &Method::GET),
            Match::Route(0)
        ));
        assert!(matches!(
            r.find(Some("[::2]"), "/", &Method::GET),
            Match::NotFound
        ));
    }
}
