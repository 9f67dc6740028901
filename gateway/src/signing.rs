//! Signed plugin modules: Ed25519 keys and detached signature files.
//!
//! * Keys are PEM files in the standard encodings, so that OpenSSL, a KMS
//!   or an HSM can make them too: the private key PKCS#8 (`PRIVATE KEY`,
//!   what `openssl genpkey -algorithm ed25519` writes), the public key
//!   SubjectPublicKeyInfo (`PUBLIC KEY`, `openssl pkey -pubout`). A key's
//!   id is the first 16 hex digits of the SHA-256 of its 32 raw bytes.
//! * A signature is a small TOML file beside the module,
//!   `<plugin>.wasm.sig`, over the plugin's name (the module's file name:
//!   a signed `rate_limit.wasm` copied to `key_auth.wasm` does not verify),
//!   the version stamped in it and its SHA-256 ([`message`]).

use std::path::Path;

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a signature for another module's content is a mismatch of.
const MODULE: &str = "module (sha256)";

/// The format of the signature files this gateway writes and reads.
pub const FORMAT: u32 = 1;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before
/// the 32 bytes of the key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410), before
/// the 32 bytes of its seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A public key modules may be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Its id (16 hex digits).
    pub id: String,
    /// The 32 bytes of the key.
    raw: [u8; 32],
}

impl TrustedKey {
    /// Parses a `PUBLIC KEY` PEM (Ed25519 SubjectPublicKeyInfo).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a `PUBLIC KEY` PEM: {e}"))?;
        let raw: [u8; 32] = der
            .as_ref()
            .strip_prefix(&SPKI_PREFIX[..])
            .and_then(|key| key.try_into().ok())
            .ok_or("not an Ed25519 public key (a SubjectPublicKeyInfo of 44 bytes)")?;
        Ok(Self {
            id: key_id(&raw),
            raw,
        })
    }

    /// Reads [`from_pem`](Self::from_pem)'s input from `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        read_pem(path, Self::from_pem)
    }

    /// Its `PUBLIC KEY` PEM.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.raw);
        pem("PUBLIC KEY", &der)
    }
}

/// A private key that signs modules.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    /// Its id, the same as its public key's.
    pub id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key, and its PEM: PKCS#8 v1 (RFC 8410), the form
    /// OpenSSL reads and writes (it does not read ring's v2).
    pub fn generate() -> Result<(Self, String), String> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| "cannot generate a key: no randomness".to_owned())?;
        let mut der = PKCS8_V1_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let pem = pem("PRIVATE KEY", &der);
        Ok((Self::from_pem(&pem)?, pem))
    }

    /// Parses a `PRIVATE KEY` PEM: PKCS#8 v1 (OpenSSL's) or v2.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a `PRIVATE KEY` PEM: {e}"))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| format!("not an Ed25519 private key (PKCS#8): {e}"))?;
        let raw: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "an Ed25519 public key is 32 bytes".to_owned())?;
        Ok(Self {
            id: key_id(&raw),
            pair,
        })
    }

    /// Reads [`from_pem`](Self::from_pem)'s input from `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        read_pem(path, Self::from_pem)
    }

    /// Its public key.
    pub fn public(&self) -> TrustedKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        TrustedKey {
            id: self.id.clone(),
            raw,
        }
    }

    /// The signature file of the module `plugin` (its version as stamped,
    /// its SHA-256 in hex).
    pub fn sign(&self, plugin: &str, version: &str, sha256: &str) -> String {
        let signature = self.pair.sign(&message(plugin, version, sha256));
        let file = SignatureFile {
            format: FORMAT,
            plugin: plugin.to_owned(),
            version: version.to_owned(),
            sha256: sha256.to_owned(),
            key_id: self.id.clone(),
            signature: hex::encode(signature.as_ref()),
        };
        let body = toml::to_string(&file).unwrap_or_default();
        format!("# A Portcullis module signature (portcullis sign).\n{body}")
    }
}

/// What a signature file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    format: u32,
    plugin: String,
    version: String,
    sha256: String,
    key_id: String,
    signature: String,
}

/// Why a module's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// There is no signature file.
    #[error("no signature ({file} is missing)")]
    Missing {
        /// The file looked for.
        file: String,
    },
    /// The file cannot be read or parsed.
    #[error("{file}: not a signature file: {reason}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// It signs another plugin, version or module.
    #[error("the signature is for {what} `{signed}`, this module is `{actual}`")]
    Mismatch {
        /// `plugin`, `version` or `module (sha256)`.
        what: &'static str,
        /// What the signature names.
        signed: String,
        /// What the module is.
        actual: String,
    },
    /// Signed by a key the config does not trust.
    #[error("signed by key {key_id}, which is not in signatures.trusted_keys")]
    Untrusted {
        /// The signer's key id.
        key_id: String,
    },
    /// The signature does not verify with the key it names.
    #[error("the signature does not verify with key {key_id}")]
    Invalid {
        /// The key it names.
        key_id: String,
    },
}

impl SignatureError {
    /// Whether the signature file is absent.
    pub fn is_missing(&self) -> bool {
        matches!(self, SignatureError::Missing { .. })
    }

    /// Whether the module's own signature may still be on its way: there
    /// is none, or the one there is for another module (the version
    /// before, whose signature the new one's has not replaced yet).
    pub fn may_still_come(&self) -> bool {
        match self {
            SignatureError::Missing { .. } => true,
            SignatureError::Mismatch { what, .. } => *what == MODULE,
            _ => false,
        }
    }
}

/// The path of `module`'s signature: `<module>.sig`.
pub fn signature_path(module: &Path) -> std::path::PathBuf {
    let mut path = module.as_os_str().to_owned();
    path.push(".sig");
    path.into()
}

/// Checks the signature file of the module at `module` (plugin `plugin`,
/// version `version`, SHA-256 `sha256`) against `trusted`; the signer's
/// key id.
pub fn verify(
    module: &Path,
    plugin: &str,
    version: &str,
    sha256: &str,
    trusted: &[TrustedKey],
) -> Result<String, SignatureError> {
    let path = signature_path(module);
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignatureError::Missing { file });
        }
        Err(e) => {
            return Err(SignatureError::Unreadable {
                file,
                reason: e.to_string(),
            });
        }
    };
    verify_text(&text, &file, plugin, version, sha256, trusted)
}

/// [`verify`], on the signature file's text.
pub fn verify_text(
    text: &str,
    file: &str,
    plugin: &str,
    version: &str,
    sha256: &str,
    trusted: &[TrustedKey],
) -> Result<String, SignatureError> {
    let unreadable = |reason: String| SignatureError::Unreadable {
        file: file.to_owned(),
        reason,
    };
    let signed: SignatureFile = toml::from_str(text).map_err(|e| unreadable(e.to_string()))?;
    if signed.format != FORMAT {
        return Err(unreadable(format!(
            "format {} (this gateway reads {FORMAT})",
            signed.format
        )));
    }
    for (what, signed, actual) in [
        ("plugin", &signed.plugin, plugin),
        ("version", &signed.version, version),
        (MODULE, &signed.sha256, sha256),
    ] {
        if signed != actual {
            return Err(SignatureError::Mismatch {
                what,
                signed: signed.clone(),
                actual: actual.to_owned(),
            });
        }
    }
    let key = trusted
        .iter()
        .find(|k| k.id == signed.key_id)
        .ok_or_else(|| SignatureError::Untrusted {
            key_id: signed.key_id.clone(),
        })?;
    let invalid = || SignatureError::Invalid {
        key_id: signed.key_id.clone(),
    };
    let signature = hex::decode(&signed.signature).map_err(|_| invalid())?;
    UnparsedPublicKey::new(&ED25519, &key.raw)
        .verify(&message(plugin, version, sha256), &signature)
        .map_err(|_| invalid())?;
    Ok(key.id.clone())
}

/// `portcullis keygen`: writes a new key pair as `<out>.key` (private,
/// mode 0600) and `<out>.pub`, refusing to overwrite either; the key id.
pub fn write_key_pair(out: &Path) -> Result<String, String> {
    let (private, public) = key_pair_paths(out);
    for path in [&private, &public] {
        if path.exists() {
            return Err(format!("{} exists; not overwriting it", path.display()));
        }
    }
    let (key, pem) = SigningKey::generate()?;
    write_new(&private, &pem, true)?;
    write_new(&public, &key.public().to_pem(), false)?;
    Ok(key.id)
}

/// `portcullis sign`: signs the module at `module` with the key at `key`,
/// as plugin `name` (by default the module's file name), writing
/// `<module>.sig` by a rename into place. What was signed, for the user.
pub fn sign_module(key: &Path, module: &Path, name: Option<&str>) -> Result<String, String> {
    let key = SigningKey::load(key)?;
    let bytes =
        std::fs::read(module).map_err(|e| format!("cannot read {}: {e}", module.display()))?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => crate::registry::plugin_name(module).ok_or_else(|| {
            format!(
                "{}: not a plugin module name (`<name>.wasm`, lowercase); give --name",
                module.display()
            )
        })?,
    };
    crate::config::check_plugin_name(&name).map_err(|e| format!("--name: {e}"))?;
    let version = crate::plugin::stamp::read(&bytes)
        .map(|s| s.version)
        .unwrap_or_default();
    let sha256 = crate::plugin::engine::content_hash(&bytes);
    let path = signature_path(module);
    let tmp = path.with_extension("sig.tmp");
    let text = key.sign(&name, &version, &sha256);
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(format!(
        "{}: plugin {name}, version {}, sha256 {sha256}, key {}",
        path.display(),
        if version.is_empty() {
            "(none stamped)"
        } else {
            &version
        },
        key.id
    ))
}

/// `<out>.key` and `<out>.pub`.
pub fn key_pair_paths(out: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let with = |ext: &str| {
        let mut path = out.as_os_str().to_owned();
        path.push(ext);
        std::path::PathBuf::from(path)
    };
    (with(".key"), with(".pub"))
}

fn write_new(path: &Path, text: &str, private: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// What is signed: a domain tag, then the plugin's name, its version and
/// the module's SHA-256, one per line (none of them can hold a newline).
pub fn message(plugin: &str, version: &str, sha256: &str) -> Vec<u8> {
    format!("portcullis-module-signature-v1\nplugin={plugin}\nversion={version}\nsha256={sha256}\n")
        .into_bytes()
}

/// `parse` of the text of the file at `path`; errors name the file.
fn read_pem<T>(path: &Path, parse: fn(&str) -> Result<T, String>) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn key_id(raw: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(raw)[..8])
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "5f4dcc3b5aa765d61d8327deb882cf99aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let (key, pem) = SigningKey::generate().expect("key");
        let again = SigningKey::from_pem(&pem).expect("reads its own PEM");
        assert_eq!(again.id, key.id);
        let public = TrustedKey::from_pem(&key.public().to_pem()).expect("public PEM");
        assert_eq!(public.id, key.id);
        assert_eq!(public.id.len(), 16);
        let trusted = [public];
        let sig = key.sign("key_auth", "0.1.0", SHA);
        assert_eq!(
            verify_text(&sig, "f", "key_auth", "0.1.0", SHA, &trusted),
            Ok(key.id.clone())
        );
        // Another plugin name, version or module.
        for (plugin, version, sha) in [
            ("rate_limit", "0.1.0", SHA),
            ("key_auth", "0.1.1", SHA),
            ("key_auth", "0.1.0", &SHA.replace('5', "6")[..]),
        ] {
            let err = verify_text(&sig, "f", plugin, version, sha, &trusted).expect_err("refused");
            assert!(matches!(err, SignatureError::Mismatch { .. }), "{err}");
        }
        // A key not trusted.
        let (other, _) = SigningKey::generate().expect("key");
        let err = verify_text(&sig, "f", "key_auth", "0.1.0", SHA, &[other.public()])
            .expect_err("untrusted");
        assert_eq!(
            err,
            SignatureError::Untrusted {
                key_id: key.id.clone()
            }
        );
        // A forged signature under a trusted key's id.
        let forged = other
            .sign("key_auth", "0.1.0", SHA)
            .replace(&other.id, &key.id);
        let err =
            verify_text(&forged, "f", "key_auth", "0.1.0", SHA, &trusted).expect_err("forged");
        assert_eq!(
            err,
            SignatureError::Invalid {
                key_id: key.id.clone()
            }
        );
        // Garbage.
        let err = verify_text("format = 1", "f", "key_auth", "0.1.0", SHA, &trusted)
            .expect_err("garbage");
        assert!(matches!(err, SignatureError::Unreadable { .. }), "{err}");
    }

    #[test]
    fn openssl_keys_are_read() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1) and its
        // `openssl pkey -pubout`.
        let private = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\n\
            MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
            -----END PUBLIC KEY-----\n";
        let key = SigningKey::from_pem(private).expect("OpenSSL private key");
        let trusted = TrustedKey::from_pem(public).expect("OpenSSL public key");
        assert_eq!(key.id, trusted.id);
        let sig = key.sign("p", "1", SHA);
        assert!(verify_text(&sig, "f", "p", "1", SHA, &[trusted]).is_ok());
        assert!(TrustedKey::from_pem(private).is_err());
    }
}
