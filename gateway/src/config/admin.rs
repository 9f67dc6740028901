//! The `[admin]` section: the admin listener (metrics, the admin API and
//! the dashboard).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Problem, TlsConfig};

/// The admin listener. Present, it serves `/metrics`, the admin API and
/// the dashboard on its own address; absent, none of them run.
///
/// ```toml
/// [admin]
/// address = "127.0.0.1:9901"     # the default; loopback needs no token
/// token_file = "admin.token"     # a bearer token every call must carry
///
/// # Off loopback, TLS and a token are required:
/// # address = "0.0.0.0:9901"
/// # [[admin.tls.certificates]]
/// # cert = "certs/admin.pem"
/// # key = "certs/admin.key"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin listener binds. Changes only with a restart.
    #[serde(default = "AdminConfig::default_address")]
    pub address: SocketAddr,
    /// A bearer token every admin call must carry
    /// (`Authorization: Bearer <token>`), at least 16 characters. Changes
    /// with a reload.
    #[serde(default)]
    pub token: Option<String>,
    /// A file whose content (trimmed) is the token, in place of `token`.
    /// Relative to the config file.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// HTTPS for the admin listener, with the listeners' TLS settings.
    /// Changes only with a restart.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Whether the dashboard is served at `/` (the API always is).
    #[serde(default = "super::yes")]
    pub dashboard: bool,
}

impl AdminConfig {
    fn default_address() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9901))
    }

    pub(super) fn resolve_paths(&mut self, resolve: &impl Fn(&mut PathBuf)) {
        if let Some(file) = self.token_file.as_mut() {
            resolve(file);
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.resolve_paths(resolve);
        }
    }

    /// Reads `token_file` into `token`.
    pub(super) fn read_token(&mut self) -> Option<Problem> {
        let file = self.token_file.as_ref()?;
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let token = text.trim().to_owned();
                if let Some(problem) = check_token(&token, "admin.token_file") {
                    return Some(problem);
                }
                self.token = Some(token);
                None
            }
            Err(e) => Some(Problem {
                key: "admin.token_file".into(),
                message: format!("cannot read {}: {e}", file.display()),
            }),
        }
    }

    /// The files it reads (a change to one is a change to the config):
    /// `token_file`, and the TLS certificates, keys and client CA.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.token_file
            .iter()
            .map(PathBuf::as_path)
            .chain(self.tls.iter().flat_map(TlsConfig::files))
    }
}

fn check_token(token: &str, key: &str) -> Option<Problem> {
    let message = if token.chars().count() < 16 {
        "must be at least 16 characters (e.g. `openssl rand -hex 32`)"
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        "must be visible ASCII characters without spaces"
    } else {
        return None;
    };
    Some(Problem {
        key: key.into(),
        message: message.into(),
    })
}

pub(super) fn validate(admin: Option<&AdminConfig>, problems: &mut Vec<Problem>) {
    let Some(admin) = admin else { return };
    let mut bad = |key: &str, message: String| {
        problems.push(Problem {
            key: key.into(),
            message,
        })
    };
    if admin.token.is_some() && admin.token_file.is_some() {
        bad(
            "admin.token",
            "set `token` or `token_file`, not both".into(),
        );
    }
    if let Some(token) = &admin.token
        && let Some(problem) = check_token(token, "admin.token")
    {
        problems.push(problem);
    }
    if !admin.address.ip().is_loopback() {
        if admin.tls.is_none() {
            problems.push(Problem {
                key: "admin.tls".into(),
                message: format!(
                    "the admin listener on {} (not loopback) must have TLS: add [[admin.tls.certificates]], or bind 127.0.0.1",
                    admin.address
                ),
            });
        }
        if admin.token.is_none() && admin.token_file.is_none() {
            problems.push(Problem {
                key: "admin.token".into(),
                message: format!(
                    "the admin listener on {} (not loopback) must have a bearer token: set `token_file`, or bind 127.0.0.1",
                    admin.address
                ),
            });
        }
    }
    if let Some(tls) = &admin.tls {
        tls.validate("admin.tls", "admin.tls", &mut |key, message| {
            problems.push(Problem { key, message })
        });
    }
}
