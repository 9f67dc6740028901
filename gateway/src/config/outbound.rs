//! `[routes.plugins.outbound]`: the origins a plugin may call on a route
//! (the contract's `http` interface), and the caps on those calls.

use std::path::PathBuf;

use serde::Deserialize;

/// What a plugin may call on one route. Without this table the plugin's
/// calls are refused (`not-granted`).
///
/// ```toml
/// [[routes.plugins]]
/// name = "jwt_auth"
/// config = { algorithms = ["RS256"], issuer = "https://idp.example.com/realms/main", discovery = true }
/// [routes.plugins.outbound]
/// allow = ["https://idp.example.com"]
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Origins the plugin may call: `scheme://host[:port]`, `http` or
    /// `https`, no path. A host given as an IP address may be any address,
    /// loopback and private ones included: listing it is the permission.
    pub allow: Vec<String>,
    /// Hosts of `allow` (names) that may resolve to loopback, private,
    /// link-local or other non-public addresses; any other name that does
    /// is refused.
    #[serde(default)]
    pub private_hosts: Vec<String>,
    /// Redirects followed at most, each checked against `allow`; `0`
    /// hands a redirect to the plugin as it came.
    #[serde(default)]
    pub max_redirects: u8,
    /// The longest a call may take, in ms (connecting, sending, the whole
    /// answer); a plugin may ask for less.
    #[serde(default = "OutboundConfig::default_timeout_ms")]
    pub timeout_ms: u32,
    /// The largest answer body, in bytes.
    #[serde(default = "OutboundConfig::default_max_response_bytes")]
    pub max_response_bytes: u32,
    /// Calls of this plugin on this route in flight at once; more fail
    /// with `busy` at once.
    #[serde(default = "OutboundConfig::default_max_concurrent")]
    pub max_concurrent: u32,
    /// A PEM bundle of the CAs that HTTPS servers' certificates are
    /// verified against, instead of the Mozilla roots (`webpki-roots`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// One entry of `allow`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The host, lowercase; an IPv6 address without brackets.
    pub host: String,
    /// The port (the scheme's default when not given).
    pub port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl Origin {
    /// The origin of `uri`, an absolute `http` or `https` URI without user
    /// information.
    pub fn of(uri: &http::Uri) -> Result<Origin, String> {
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => "https",
            Some(s) if s.eq_ignore_ascii_case("http") => "http",
            Some(other) => return Err(format!("the scheme `{other}` is not http or https")),
            None => return Err("not an absolute URL".into()),
        };
        let authority = uri.authority().ok_or("the URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("user information in URLs is not allowed".into());
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_ascii_lowercase();
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Origin { scheme, host, port })
    }

    /// `entry` of `allow`: an origin with no path, query or fragment.
    pub fn parse(entry: &str) -> Result<Origin, String> {
        let uri: http::Uri = entry
            .parse()
            .map_err(|e| format!("`{entry}` is not a URL: {e}"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "`{entry}`: an origin is scheme://host[:port], without a path"
            ));
        }
        Origin::of(&uri).map_err(|e| format!("`{entry}`: {e}"))
    }

    /// The host as an IP address, if it is one.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.host.parse().ok()
    }
}

impl OutboundConfig {
    fn default_timeout_ms() -> u32 {
        5_000
    }

    fn default_max_response_bytes() -> u32 {
        1024 * 1024
    }

    fn default_max_concurrent() -> u32 {
        16
    }

    /// The parsed `allow` list (after [`OutboundConfig::validate`] found no
    /// problem, every entry parses).
    pub fn origins(&self) -> Vec<Origin> {
        self.allow
            .iter()
            .filter_map(|e| Origin::parse(e).ok())
            .collect()
    }

    pub(super) fn validate(&self, key: &str, bad: &mut impl FnMut(String, String)) {
        if self.allow.is_empty() {
            bad(
                format!("{key}.allow"),
                "must list at least one origin (scheme://host[:port])".into(),
            );
        }
        let mut names = Vec::new();
        for (i, entry) in self.allow.iter().enumerate() {
            match Origin::parse(entry) {
                Ok(origin) => {
                    if origin.ip().is_none() {
                        names.push(origin.host);
                    }
                }
                Err(why) => bad(format!("{key}.allow[{i}]"), why),
            }
        }
        for (i, host) in self.private_hosts.iter().enumerate() {
            let host = host.to_ascii_lowercase();
            if !names.contains(&host) {
                bad(
                    format!("{key}.private_hosts[{i}]"),
                    format!("`{host}` is not the host name of an origin in `allow`"),
                );
            }
        }
        if self.max_redirects > 10 {
            bad(
                format!("{key}.max_redirects"),
                format!("must be at most 10, got {}", self.max_redirects),
            );
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            bad(
                format!("{key}.timeout_ms"),
                format!("must be between 1 and 60000, got {}", self.timeout_ms),
            );
        }
        if !(1..=16 * 1024 * 1024).contains(&self.max_response_bytes) {
            bad(
                format!("{key}.max_response_bytes"),
                format!(
                    "must be between 1 and 16777216, got {}",
                    self.max_response_bytes
                ),
            );
        }
        if !(1..=10_000).contains(&self.max_concurrent) {
            bad(
                format!("{key}.max_concurrent"),
                format!("must be between 1 and 10000, got {}", self.max_concurrent),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_with_default_ports() {
        let o = Origin::parse("https://IdP.example.com").expect("origin");
        assert_eq!(
            (o.scheme, o.host.as_str(), o.port),
            ("https", "idp.example.com", 443)
        );
        let o = Origin::parse("http://[::1]:8080/").expect("origin");
        assert_eq!((o.host.as_str(), o.port), ("::1", 8080));
        assert_eq!(o.to_string(), "http://[::1]:8080");
        assert!(Origin::parse("https://idp.example.com/realms").is_err());
        assert!(Origin::parse("ftp://idp.example.com").is_err());
        assert!(Origin::parse("https://user@idp.example.com").is_err());
        assert!(Origin::parse("idp.example.com").is_err());
    }

    #[test]
    fn validation_names_keys() {
        let config = OutboundConfig {
            allow: vec!["https://a.example".into(), "nope".into()],
            private_hosts: vec!["b.example".into()],
            max_redirects: 11,
            timeout_ms: 0,
            max_response_bytes: 0,
            max_concurrent: 0,
            ca: None,
        };
        let mut keys = Vec::new();
        config.validate("o", &mut |k, _| keys.push(k));
        assert_eq!(
            keys,
            [
                "o.allow[1]",
                "o.private_hosts[0]",
                "o.max_redirects",
                "o.timeout_ms",
                "o.max_response_bytes",
                "o.max_concurrent"
            ]
        );
    }
}
