//! TLS on a listener: certificates loaded and checked, chosen by SNI.
//!
//! A [`ListenerTls`] is built with each config generation from the
//! listener's `[listeners.tls]` and the PEM files it names. Every
//! certificate is checked before it can serve: the chain parses, the key
//! matches the leaf, the leaf is valid now (a warning when it expires
//! within [`EXPIRY_WARNING`]). A listener whose files fail a check fails
//! its generation: at start the gateway does not start, on reload the
//! previous generation, and its certificates, keep serving.
//!
//! Connections take the listener's TLS settings of the generation current
//! when they are accepted and keep them to the end; a reload changes only
//! what new connections see.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::x509::X509Name;

use crate::config::{CertificateConfig, ClientAuthConfig, ClientAuthMode, TlsConfig};
use crate::plugin::ClientCertificate;

/// A certificate that expires sooner than this is logged at warn level
/// whenever it is loaded.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// ALPN protocols offered, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A listener's TLS settings, ready to accept connections.
pub struct ListenerTls {
    /// The rustls configuration handshakes use.
    pub server: Arc<ServerConfig>,
    /// How long a client may take to complete the handshake.
    pub handshake_timeout: Duration,
    /// What was loaded, in config order.
    pub certificates: Vec<CertificateInfo>,
    /// The settings and the files' content this was built from: a reload
    /// that changes neither keeps this (and its session cache).
    source: (TlsConfig, [u8; 32]),
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("certificates", &self.certificates)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// What a loaded certificate is, for logs (and the admin API to come).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The certificate file.
    pub file: String,
    /// DNS names of the leaf's subject alternative names (SNI matches these).
    pub names: Vec<String>,
    /// The end of the leaf's validity.
    pub not_after: SystemTime,
}

impl CertificateInfo {
    /// Its first DNS name, or its file without one.
    pub fn display_name(&self) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| self.file.clone())
    }
}

/// The files of a listener, read once: what [`ListenerTls::load`] checks
/// and what tells whether anything changed.
struct Files {
    pems: Vec<(Vec<u8>, Vec<u8>)>,
    /// The client CA bundle, with mutual TLS.
    client_ca: Option<Vec<u8>>,
    digest: [u8; 32],
}

fn read_files(tls: &TlsConfig) -> Result<Files, Vec<String>> {
    let mut problems = Vec::new();
    let mut pems = Vec::with_capacity(tls.certificates.len());
    let mut digest = Sha256::new();
    let mut read = |path: &Path| match std::fs::read(path) {
        Ok(bytes) => {
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(&bytes);
            bytes
        }
        Err(e) => {
            problems.push(format!("cannot read {}: {e}", path.display()));
            Vec::new()
        }
    };
    for c in &tls.certificates {
        let cert = read(&c.cert);
        let key = read(&c.key);
        pems.push((cert, key));
    }
    let client_ca = tls.client_auth.as_ref().map(|auth| read(&auth.ca));
    if problems.is_empty() {
        Ok(Files {
            pems,
            client_ca,
            digest: digest.finalize().into(),
        })
    } else {
        Err(problems)
    }
}

impl ListenerTls {
    /// Loads and checks the certificates of listener `index`; `previous`
    /// is kept when neither the settings nor the files changed. `now` is
    /// the time validity is checked against. Errors name the listener and
    /// file.
    pub fn load(
        index: usize,
        tls: &TlsConfig,
        previous: Option<&Arc<ListenerTls>>,
        now: SystemTime,
    ) -> Result<Arc<Self>, Vec<String>> {
        Self::load_named(&format!("listeners[{index}].tls"), tls, previous, now)
    }

    /// [`load`](Self::load) for the settings at config key `key` (the
    /// admin listener's are `admin.tls`).
    pub fn load_named(
        at: &str,
        tls: &TlsConfig,
        previous: Option<&Arc<ListenerTls>>,
        now: SystemTime,
    ) -> Result<Arc<Self>, Vec<String>> {
        let name = |problem: String| format!("{at}: {problem}");
        let files = read_files(tls).map_err(|ps| ps.into_iter().map(name).collect::<Vec<_>>())?;
        if let Some(previous) = previous
            && previous.source.0 == *tls
            && previous.source.1 == files.digest
        {
            return Ok(previous.clone());
        }
        let provider = crate::crypto::provider();
        let mut problems = Vec::new();
        let mut keys = Vec::with_capacity(tls.certificates.len());
        let mut certificates = Vec::with_capacity(tls.certificates.len());
        for (config, (cert_pem, key_pem)) in tls.certificates.iter().zip(&files.pems) {
            match load_pair(config, cert_pem, key_pem, &provider, now) {
                Ok((key, info)) => {
                    let left = info.not_after.duration_since(now).unwrap_or(Duration::ZERO);
                    if left < EXPIRY_WARNING {
                        tracing::warn!(
                            listener = at,
                            file = %info.file,
                            not_after = %humantime::format_rfc3339_seconds(info.not_after),
                            "certificate expires in {} days",
                            left.as_secs() / 86_400
                        );
                    }
                    keys.push(Arc::new(key));
                    certificates.push(info);
                }
                Err(problem) => problems.push(name(problem)),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let default = tls.certificates.iter().position(|c| c.default).unwrap_or(0);
        let resolver = SniResolver::new(&keys, &certificates, default)
            .ok_or_else(|| vec![name("no certificate".into())])?;

        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(|e| vec![name(format!("protocol versions: {e}"))])?;
        let builder = match (&tls.client_auth, &files.client_ca) {
            (Some(auth), Some(pem)) => builder.with_client_cert_verifier(
                client_verifier(auth, pem, provider).map_err(|e| vec![name(e)])?,
            ),
            _ => builder.with_no_client_auth(),
        };
        let mut server = builder.with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Stateless resumption (TLS 1.2 tickets, TLS 1.3 tickets) with
        // keys that rotate every six hours; the in-memory cache stays for
        // stateful resumption.
        server.ticketer =
            crate::crypto::ticketer().map_err(|e| vec![name(format!("session tickets: {e}"))])?;

        Ok(Arc::new(Self {
            server: Arc::new(server),
            handshake_timeout: Duration::from_millis(tls.handshake_timeout_ms),
            certificates,
            source: (tls.clone(), files.digest),
        }))
    }
}

/// The verifier of client certificates: they must chain to a CA of the
/// bundle (webpki: signatures, validity, the client-auth usage).
fn client_verifier(
    auth: &ClientAuthConfig,
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let file = auth.ca.display();
    let roots = crate::crypto::root_store(pem, &file)?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth.mode {
        ClientAuthMode::Required => builder,
        ClientAuthMode::Optional => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|e| format!("{file}: cannot verify clients with it: {e}"))
}

/// What plugins see of a verified client certificate; `None` if it does
/// not parse (rustls has verified it, so that does not happen in practice).
pub fn client_certificate(der: &CertificateDer<'_>) -> Option<ClientCertificate> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let (mut dns_names, mut uris, mut emails) = (Vec::new(), Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns_names.push((*n).to_owned()),
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::RFC822Name(e) => emails.push((*e).to_owned()),
                _ => {}
            }
        }
    }
    Some(ClientCertificate {
        subject: distinguished_name(cert.subject()),
        issuer: distinguished_name(cert.issuer()),
        dns_names,
        uris,
        emails,
        sha256: hex::encode(Sha256::digest(der.as_ref())),
        serial: hex::encode(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A distinguished name as text: attributes in the certificate's order,
/// `, ` between them, `+` within a multi-valued one, values escaped as RFC
/// 4514 §2.4 says, so that no value can pass for another attribute.
fn distinguished_name(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, rdn) in name.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match oid2abbrev(oid, oid_registry()) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_dn_value(value, &mut out),
                // Not a string type: its content octets in hex, after `#`.
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex::encode(attr.attr_value().data));
                }
            }
        }
    }
    out
}

fn escape_dn_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Parses and checks one certificate chain and its key.
fn load_pair(
    config: &CertificateConfig,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<(CertifiedKey, CertificateInfo), String> {
    let file = config.cert.display().to_string();
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{file}: not a PEM certificate chain: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{file}: no certificate in the file"));
    };
    for (i, cert) in chain.iter().enumerate() {
        if let Err(e) = x509_parser::parse_x509_certificate(cert) {
            return Err(format!("{file}: certificate {i} of the chain: {e}"));
        }
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("{file}: the certificate: {e}"))?;
    let validity = parsed.validity();
    let not_before = to_system_time(validity.not_before.timestamp());
    let not_after = to_system_time(validity.not_after.timestamp());
    if now < not_before {
        return Err(format!(
            "{file}: the certificate is not valid before {}",
            humantime::format_rfc3339_seconds(not_before)
        ));
    }
    if now > not_after {
        return Err(format!(
            "{file}: the certificate expired on {}",
            humantime::format_rfc3339_seconds(not_after)
        ));
    }
    let names = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("{file}: subject alternative names: {e}")),
    };

    let key_file = config.key.display();
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{key_file}: not a PEM private key: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_file}: unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "{key_file} is not the private key of the certificate in {file}"
            ));
        }
        Err(e) => return Err(format!("{file}: {e}")),
    }
    Ok((
        certified,
        CertificateInfo {
            file,
            names,
            not_after,
        },
    ))
}

fn to_system_time(unix: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// Chooses a certificate by SNI: an exact name first, then a wildcard
/// (`*.example.com` covers one label), else the default.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The first certificate that names a host serves it.
    fn new(keys: &[Arc<CertifiedKey>], infos: &[CertificateInfo], default: usize) -> Option<Self> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (key, info) in keys.iter().zip(infos) {
            for name in &info.names {
                let (table, name) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut wildcard, suffix),
                    None => (&mut exact, name.as_str()),
                };
                table.entry(name.to_owned()).or_insert_with(|| key.clone());
            }
        }
        Some(Self {
            exact,
            wildcard,
            default: keys.get(default).or_else(|| keys.first())?.clone(),
        })
    }

    fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    /// A self-signed certificate for `names`, valid from `from` to `to`
    /// days from now.
    fn issue(names: &[&str], from: i64, to: i64) -> Pair {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let day = |d: i64| {
            let offset = Duration::from_secs(d.unsigned_abs() * 86_400);
            if d < 0 {
                SystemTime::now() - offset
            } else {
                SystemTime::now() + offset
            }
        };
        params.not_before = day(from).into();
        params.not_after = day(to).into();
        let cert = params.self_signed(&key).expect("cert");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn write(dir: &Path, name: &str, cert: &str, key: &str) -> CertificateConfig {
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert).expect("write");
        std::fs::write(&key_path, key).expect("write");
        CertificateConfig {
            cert: cert_path,
            key: key_path,
            default: false,
        }
    }

    fn tls(certificates: Vec<CertificateConfig>) -> TlsConfig {
        TlsConfig {
            certificates,
            handshake_timeout_ms: 1000,
            client_auth: None,
        }
    }

    fn load_one(pair: &Pair) -> Result<(CertifiedKey, CertificateInfo), String> {
        let config = CertificateConfig {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            default: false,
        };
        let provider = crate::crypto::provider();
        load_pair(
            &config,
            pair.cert.as_bytes(),
            pair.key.as_bytes(),
            &provider,
            SystemTime::now(),
        )
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let pairs = [
            issue(&["api.example.com"], -1, 90),
            issue(&["*.example.com"], -1, 90),
            issue(&["other.test"], -1, 90),
        ];
        let (keys, infos): (Vec<_>, Vec<_>) = pairs
            .iter()
            .map(|p| load_one(p).expect("loads"))
            .map(|(k, i)| (Arc::new(k), i))
            .unzip();
        assert_eq!(infos[1].names, ["*.example.com"]);
        let resolver = SniResolver::new(&keys, &infos, 2).expect("resolver");
        let chosen = |name: Option<&str>| {
            let key = resolver.choose(name);
            keys.iter().position(|k| Arc::ptr_eq(k, key))
        };
        assert_eq!(chosen(Some("api.example.com")), Some(0));
        assert_eq!(chosen(Some("API.Example.COM")), Some(0));
        assert_eq!(chosen(Some("www.example.com")), Some(1));
        // A wildcard covers one label only.
        assert_eq!(chosen(Some("a.b.example.com")), Some(2));
        assert_eq!(chosen(Some("example.com")), Some(2));
        assert_eq!(chosen(Some("nope.test")), Some(2));
        assert_eq!(chosen(None), Some(2));
    }

    #[test]
    fn a_bad_certificate_or_key_is_refused_with_its_file() {
        let expired = load_one(&issue(&["a.test"], -30, -1)).expect_err("expired");
        assert!(
            expired.contains("cert.pem: the certificate expired on"),
            "{expired}"
        );
        let early = load_one(&issue(&["a.test"], 2, 30)).expect_err("not yet valid");
        assert!(early.contains("is not valid before"), "{early}");

        let one = issue(&["a.test"], -1, 30);
        let other = issue(&["a.test"], -1, 30);
        let mismatch = load_one(&Pair {
            cert: one.cert.clone(),
            key: other.key.clone(),
        })
        .expect_err("mismatch");
        assert_eq!(
            mismatch,
            "key.pem is not the private key of the certificate in cert.pem"
        );
        let empty = load_one(&Pair {
            cert: "not a certificate".into(),
            key: one.key.clone(),
        })
        .expect_err("empty");
        assert_eq!(empty, "cert.pem: no certificate in the file");
        let no_key = load_one(&Pair {
            cert: one.cert,
            key: "nothing".into(),
        })
        .expect_err("no key");
        assert!(
            no_key.starts_with("key.pem: not a PEM private key"),
            "{no_key}"
        );
    }

    #[test]
    fn a_reload_keeps_the_same_settings_and_files_and_takes_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let pair = issue(&["a.test"], -1, 90);
        let config = tls(vec![write(dir.path(), "a", &pair.cert, &pair.key)]);
        let first = ListenerTls::load(0, &config, None, SystemTime::now()).expect("loads");
        let same = ListenerTls::load(0, &config, Some(&first), SystemTime::now()).expect("loads");
        assert!(Arc::ptr_eq(&first, &same));

        let renewed = issue(&["a.test"], -1, 90);
        write(dir.path(), "a", &renewed.cert, &renewed.key);
        let next = ListenerTls::load(0, &config, Some(&first), SystemTime::now()).expect("loads");
        assert!(!Arc::ptr_eq(&first, &next));

        std::fs::remove_file(dir.path().join("a.key")).expect("remove");
        let missing =
            ListenerTls::load(0, &config, Some(&next), SystemTime::now()).expect_err("missing key");
        assert!(
            missing[0].starts_with("listeners[0].tls: cannot read "),
            "{missing:?}"
        );
    }

    #[test]
    fn a_certificate_close_to_expiry_still_loads() {
        let dir = tempfile::tempdir().expect("dir");
        let pair = issue(&["a.test"], -80, 3);
        let config = tls(vec![write(dir.path(), "a", &pair.cert, &pair.key)]);
        let loaded = ListenerTls::load(1, &config, None, SystemTime::now()).expect("loads");
        assert_eq!(loaded.certificates[0].names, ["a.test"]);
    }

    #[test]
    fn a_client_certificate_reaches_plugins_with_escaped_names() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Corp");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing, O=Admins");
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("billing.internal".try_into().expect("dns")),
            rcgen::SanType::URI("spiffe://example.org/billing".try_into().expect("uri")),
            rcgen::SanType::Rfc822Name("ops@example.org".try_into().expect("email")),
        ];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
        let cert = params.self_signed(&key).expect("cert");
        let seen = client_certificate(cert.der()).expect("parses");
        // rcgen writes the common name first.
        assert_eq!(seen.subject, "CN=billing\\, O=Admins, O=Example Corp");
        assert_eq!(seen.issuer, seen.subject, "self-signed");
        assert_eq!(seen.dns_names, ["billing.internal"]);
        assert_eq!(seen.uris, ["spiffe://example.org/billing"]);
        assert_eq!(seen.emails, ["ops@example.org"]);
        assert_eq!(seen.serial, "0abc");
        assert_eq!(
            seen.sha256,
            hex::encode(Sha256::digest(cert.der().as_ref()))
        );
        assert!(seen.not_after > 0);
    }

    #[test]
    fn dn_values_are_escaped_as_rfc_4514_says() {
        let escaped = |v: &str| {
            let mut out = String::new();
            escape_dn_value(v, &mut out);
            out
        };
        assert_eq!(escaped("a,b+c"), "a\\,b\\+c");
        assert_eq!(escaped("#x "), "\\#x\\ ");
        assert_eq!(escaped(" x"), "\\ x");
        assert_eq!(escaped("plain"), "plain");
    }
}
