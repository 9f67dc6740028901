//! Verification keys: PEM public keys, HMAC secrets and JWKS documents.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use serde::Deserialize;
use serde_json::{Map, Value};

/// HMAC secrets shorter than this (in bytes) get a warning: RFC 7518
/// §3.2 asks for a key at least as long as the hash output.
const SHORT_SECRET: usize = 32;

/// A key that can verify tokens.
#[derive(Debug)]
pub(crate) struct Key {
    /// The key id a token's `kid` must name, if the key has one.
    pub(crate) kid: Option<String>,
    /// The only algorithm the key may verify, if it is restricted (a JWK's
    /// `alg`, or the curve of an EC key).
    pub(crate) alg: Option<Algorithm>,
    /// The key itself.
    pub(crate) key: DecodingKey,
    /// Where the key was configured, e.g. `keys[0]` or `jwks.keys[2]`.
    pub(crate) origin: String,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn usable_for(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|only| only == alg)
    }
}

/// One entry of `keys`: exactly one of `pem`, `secret` and `secret_base64`.
///
/// ```toml
/// { kid = "2024-01", pem = "-----BEGIN PUBLIC KEY-----\n..." }
/// { secret_base64 = "c2VjcmV0..." }
/// ```
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyConfig {
    /// The key id tokens name in their `kid` header.
    #[serde(default)]
    kid: Option<String>,
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519) or certificate.
    #[serde(default)]
    pem: Option<String>,
    /// An HMAC secret, as text (its UTF-8 bytes).
    #[serde(default)]
    secret: Option<String>,
    /// An HMAC secret, base64 (standard or URL-safe, padding optional).
    #[serde(default)]
    secret_base64: Option<String>,
}

/// Base64 decoders that accept padding or its absence.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

impl KeyConfig {
    /// The key of `keys[index]`, or what is wrong with it. Warnings (a
    /// short secret) are pushed to `warnings`.
    pub(crate) fn build(self, index: usize, warnings: &mut Vec<String>) -> Result<Key, String> {
        let origin = format!("keys[{index}]");
        if self.kid.as_deref().is_some_and(str::is_empty) {
            return Err(format!("{origin}.kid: must not be empty"));
        }
        let (key, alg) = match (self.pem, self.secret, self.secret_base64) {
            (Some(pem), None, None) => {
                pem_key(&pem).map_err(|why| format!("{origin}.pem: {why}"))?
            }
            (None, Some(secret), None) => {
                let key = secret_key(secret.as_bytes(), &format!("{origin}.secret"), warnings)?;
                (key, None)
            }
            (None, None, Some(encoded)) => {
                let encoded = encoded.trim();
                let bytes = STANDARD_LENIENT
                    .decode(encoded)
                    .or_else(|_| URL_SAFE_LENIENT.decode(encoded))
                    .map_err(|_| format!("{origin}.secret_base64: not valid base64"))?;
                let key = secret_key(&bytes, &format!("{origin}.secret_base64"), warnings)?;
                (key, None)
            }
            (None, None, None) => {
                return Err(format!(
                    "{origin}: set one of `pem`, `secret` and `secret_base64`"
                ));
            }
            _ => {
                return Err(format!(
                    "{origin}: set only one of `pem`, `secret` and `secret_base64`"
                ));
            }
        };
        Ok(Key {
            kid: self.kid,
            alg,
            key,
            origin,
        })
    }
}

/// An HMAC key from secret bytes.
fn secret_key(
    bytes: &[u8],
    origin: &str,
    warnings: &mut Vec<String>,
) -> Result<DecodingKey, String> {
    if bytes.is_empty() {
        return Err(format!("{origin}: must not be empty"));
    }
    if bytes.len() < SHORT_SECRET {
        warnings.push(format!(
            "{origin}: the secret is {} bytes; HMAC secrets should have at least {SHORT_SECRET} (RFC 7518 section 3.2)",
            bytes.len()
        ));
    }
    DecodingKey::from_secret(bytes).map_err(|e| format!("{origin}: {e}"))
}

/// A public key from PEM text: RSA, EC or Ed25519, as `PUBLIC KEY`,
/// `RSA PUBLIC KEY` or `CERTIFICATE`. An EC key is restricted to the
/// algorithm of its curve.
fn pem_key(pem: &str) -> Result<(DecodingKey, Option<Algorithm>), String> {
    if pem.contains("PRIVATE KEY-----") {
        return Err(
            "a private key; give the public key (`openssl pkey -in key.pem -pubout`)".to_owned(),
        );
    }
    if !pem.contains("-----BEGIN ") {
        return Err("not PEM text (`-----BEGIN PUBLIC KEY-----` ...)".to_owned());
    }
    let bytes = pem.as_bytes();
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        return Ok((key, None));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        let alg = ec_algorithm(&key)
            .ok_or("an EC key on a curve other than P-256 and P-384, which are not supported")?;
        return Ok((key, Some(alg)));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        return Ok((key, None));
    }
    Err("not an RSA, EC (P-256, P-384) or Ed25519 public key or certificate".to_owned())
}

/// The algorithm of an EC key's curve, from the length of its
/// uncompressed point (`04 || x || y`).
fn ec_algorithm(key: &DecodingKey) -> Option<Algorithm> {
    match key.kind() {
        DecodingKeyKind::SecretOrDer(point) if point.len() == 65 => Some(Algorithm::ES256),
        DecodingKeyKind::SecretOrDer(point) if point.len() == 97 => Some(Algorithm::ES384),
        _ => None,
    }
}

/// The keys of a JWKS: `value` is the document itself (a JSON object) or
/// its JSON text. Keys meant for encryption (`use: enc`) or of a type or
/// algorithm that cannot verify JWS tokens are skipped with a warning; a
/// signing key that is malformed is an error.
pub(crate) fn jwks_keys(value: Value, warnings: &mut Vec<String>) -> Result<Vec<Key>, Vec<String>> {
    let document = match value {
        Value::String(text) => serde_json::from_str::<Value>(&text)
            .map_err(|e| vec![format!("jwks: the text is not JSON ({e})")])?,
        other => other,
    };
    let Value::Object(mut document) = document else {
        return Err(vec![
            "jwks: expected a JWKS document (`{ keys = [...] }`) or its JSON text".to_owned(),
        ]);
    };
    let Some(Value::Array(entries)) = document.remove("keys") else {
        return Err(vec!["jwks.keys: missing, or not an array".to_owned()]);
    };
    let mut keys = Vec::with_capacity(entries.len());
    let mut problems = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let origin = format!("jwks.keys[{i}]");
        let Value::Object(jwk) = entry else {
            problems.push(format!("{origin}: not an object"));
            continue;
        };
        match jwk_key(&jwk, &origin) {
            Ok(Jwk::Key(key)) => keys.push(key),
            Ok(Jwk::Skipped(why)) => warnings.push(format!("{origin}: skipped: {why}")),
            Err(why) => problems.push(why),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

/// What a JWK turned into.
enum Jwk {
    /// A key that can verify tokens.
    Key(Key),
    /// A key this plugin cannot use for JWS, and why.
    Skipped(String),
}

/// The key of one JWK (RFC 7517, RFC 7518 §6, RFC 8037).
fn jwk_key(jwk: &Map<String, Value>, origin: &str) -> Result<Jwk, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("{origin}.{name}: not a string")),
        }
    };
    let required = |name: &str| -> Result<&str, String> {
        text(name)?.ok_or_else(|| format!("{origin}.{name}: missing"))
    };
    if text("use")? == Some("enc") {
        return Ok(Jwk::Skipped("an encryption key (`use` = `enc`)".to_owned()));
    }
    let alg = match text("alg")? {
        None => None,
        Some(name) => match name.parse::<Algorithm>() {
            Ok(alg) => Some(alg),
            Err(_) => {
                return Ok(Jwk::Skipped(format!(
                    "algorithm `{name}` is not a supported signature algorithm"
                )));
            }
        },
    };
    let kid = text("kid")?.map(str::to_owned);
    let kty = required("kty")?;
    let bad = |field: &str| format!("{origin}.{field}: not valid base64url");
    let (key, curve_alg) = match kty {
        "RSA" => {
            let key = DecodingKey::from_rsa_components(required("n")?, required("e")?)
                .map_err(|_| bad("n, e"))?;
            (key, None)
        }
        "EC" => {
            let curve_alg = match required("crv")? {
                "P-256" => Algorithm::ES256,
                "P-384" => Algorithm::ES384,
                other => {
                    return Ok(Jwk::Skipped(format!("curve `{other}` is not supported")));
                }
            };
            let key = DecodingKey::from_ec_components(required("x")?, required("y")?)
                .map_err(|_| bad("x, y"))?;
            (key, Some(curve_alg))
        }
        "OKP" => {
            let curve = required("crv")?;
            if curve != "Ed25519" {
                return Ok(Jwk::Skipped(format!("curve `{curve}` is not supported")));
            }
            let key = DecodingKey::from_ed_components(required("x")?).map_err(|_| bad("x"))?;
            (key, None)
        }
        "oct" => {
            let secret = URL_SAFE_LENIENT
                .decode(required("k")?)
                .map_err(|_| bad("k"))?;
            if secret.is_empty() {
                return Err(format!("{origin}.k: must not be empty"));
            }
            let key = DecodingKey::from_secret(&secret).map_err(|e| format!("{origin}.k: {e}"))?;
            (key, None)
        }
        other => {
            return Ok(Jwk::Skipped(format!("key type `{other}` is not supported")));
        }
    };
    if let Some(alg) = alg
        && (alg.family() != key.family() || curve_alg.is_some_and(|c| c != alg))
    {
        return Err(format!(
            "{origin}.alg: `{alg:?}` cannot be used with a `{kty}` key{}",
            curve_alg
                .map(|c| format!(" on that curve (it takes {c:?})"))
                .unwrap_or_default()
        ));
    }
    Ok(Jwk::Key(Key {
        kid,
        alg: alg.or(curve_alg),
        key,
        origin: origin.to_owned(),
    }))
}

/// The family's name for messages.
pub(crate) fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC secret",
        AlgorithmFamily::Rsa => "RSA key",
        AlgorithmFamily::Ec => "EC key",
        AlgorithmFamily::Ed => "Ed25519 key",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/tests/data/jwt/");

    fn read(name: &str) -> String {
        std::fs::read_to_string(format!("{DATA}{name}")).expect("test key")
    }

    fn key_config(json: Value) -> KeyConfig {
        serde_json::from_value(json).expect("key config parses")
    }

    #[test]
    fn pem_keys_are_recognised_by_type() {
        let mut warnings = Vec::new();
        let rsa = key_config(serde_json::json!({ "kid": "r", "pem": read("rsa_public.pem") }))
            .build(0, &mut warnings)
            .expect("rsa");
        assert_eq!(rsa.key.family(), AlgorithmFamily::Rsa);
        assert_eq!(rsa.kid.as_deref(), Some("r"));
        assert!(rsa.usable_for(Algorithm::RS256) && rsa.usable_for(Algorithm::PS512));
        assert!(!rsa.usable_for(Algorithm::HS256));

        let ec = key_config(serde_json::json!({ "pem": read("ec_public.pem") }))
            .build(1, &mut warnings)
            .expect("ec");
        assert_eq!(ec.alg, Some(Algorithm::ES256), "a P-256 key");
        assert!(!ec.usable_for(Algorithm::ES384));
        assert_eq!(ec.origin, "keys[1]");

        let ed = key_config(serde_json::json!({ "pem": read("ed25519_public.pem") }))
            .build(2, &mut warnings)
            .expect("ed");
        assert!(ed.usable_for(Algorithm::EdDSA));
        assert!(warnings.is_empty());
    }

    #[test]
    fn secrets_as_text_or_base64() {
        let mut warnings = Vec::new();
        let text = key_config(serde_json::json!({ "secret": "s".repeat(32) }))
            .build(0, &mut warnings)
            .expect("text");
        assert_eq!(
            text.key.try_get_as_bytes().expect("bytes"),
            "s".repeat(32).as_bytes()
        );
        for encoded in ["aGVsbG8gd29ybGQ=", "aGVsbG8gd29ybGQ"] {
            let key = key_config(serde_json::json!({ "secret_base64": encoded }))
                .build(0, &mut warnings)
                .expect("base64");
            assert_eq!(key.key.try_get_as_bytes().expect("bytes"), b"hello world");
            assert!(key.usable_for(Algorithm::HS512));
        }
        let url_safe = key_config(serde_json::json!({ "secret_base64": "-_8" }))
            .build(0, &mut warnings)
            .expect("url-safe");
        assert_eq!(
            url_safe.key.try_get_as_bytes().expect("bytes"),
            [0xfb, 0xff]
        );
        assert_eq!(warnings.len(), 3, "short secrets: {warnings:?}");
        assert!(warnings[0].starts_with("keys[0].secret_base64: the secret is 11 bytes"));
    }

    #[test]
    fn bad_key_entries_are_refused_by_name() {
        let cases = [
            (
                serde_json::json!({}),
                "keys[0]: set one of `pem`, `secret` and `secret_base64`",
            ),
            (
                serde_json::json!({ "secret": "a", "pem": "b" }),
                "keys[0]: set only one of",
            ),
            (
                serde_json::json!({ "secret": "" }),
                "keys[0].secret: must not be empty",
            ),
            (
                serde_json::json!({ "secret_base64": "!!" }),
                "keys[0].secret_base64: not valid base64",
            ),
            (
                serde_json::json!({ "kid": "", "secret": "x" }),
                "keys[0].kid: must not be empty",
            ),
            (
                serde_json::json!({ "pem": "hello" }),
                "keys[0].pem: not PEM text",
            ),
            (
                serde_json::json!({ "pem": read("rsa_private.pem") }),
                "keys[0].pem: a private key",
            ),
            (
                serde_json::json!({ "pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n" }),
                "keys[0].pem: not an RSA, EC (P-256, P-384) or Ed25519 public key",
            ),
        ];
        for (json, expected) in cases {
            let err = key_config(json.clone())
                .build(0, &mut Vec::new())
                .expect_err("must be refused");
            assert!(err.starts_with(expected), "{json}: {err}");
        }
    }

    #[test]
    fn a_jwks_document_or_its_text() {
        let text = read("jwks.json");
        let from_text = jwks_keys(Value::String(text.clone()), &mut Vec::new()).expect("text");
        let document: Value = serde_json::from_str(&text).expect("JSON");
        let from_value = jwks_keys(document, &mut Vec::new()).expect("object");
        for keys in [&from_text, &from_value] {
            let kids: Vec<_> = keys
                .iter()
                .map(|k| k.kid.as_deref().unwrap_or("-"))
                .collect();
            assert_eq!(kids, ["rsa-1", "rsa-2", "ec-1", "ed-1"]);
            assert_eq!(keys[0].alg, Some(Algorithm::RS256));
            assert_eq!(keys[2].alg, Some(Algorithm::ES256));
            assert_eq!(keys[3].key.family(), AlgorithmFamily::Ed);
            assert_eq!(keys[1].origin, "jwks.keys[1]");
        }
    }

    #[test]
    fn unusable_jwks_keys_are_skipped_with_a_warning() {
        let mut warnings = Vec::new();
        let keys = jwks_keys(
            serde_json::json!({ "keys": [
                { "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB" },
                { "kty": "RSA", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" },
                { "kty": "EC", "crv": "P-521", "x": "AQAB", "y": "AQAB" },
                { "kty": "OKP", "crv": "X25519", "x": "AQAB" },
                { "kty": "XYZ" },
                { "kty": "oct", "k": "c2VjcmV0", "kid": "h" },
            ] }),
            &mut warnings,
        )
        .expect("valid");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("h"));
        assert_eq!(keys[0].key.family(), AlgorithmFamily::Hmac);
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        assert!(warnings[0].starts_with("jwks.keys[0]: skipped: an encryption key"));
        assert!(warnings[2].contains("curve `P-521`"));
    }

    #[test]
    fn malformed_jwks_are_refused_by_name() {
        let cases = [
            (Value::String("{".to_owned()), "jwks: the text is not JSON"),
            (serde_json::json!([1]), "jwks: expected a JWKS document"),
            (serde_json::json!({ "key": [] }), "jwks.keys: missing"),
            (
                serde_json::json!({ "keys": [1] }),
                "jwks.keys[0]: not an object",
            ),
            (
                serde_json::json!({ "keys": [{ "n": "AQAB" }] }),
                "jwks.keys[0].kty: missing",
            ),
            (
                serde_json::json!({ "keys": [{ "kty": "RSA", "e": "AQAB" }] }),
                "jwks.keys[0].n: missing",
            ),
            (
                serde_json::json!({ "keys": [{ "kty": "RSA", "n": "!!", "e": "AQAB" }] }),
                "jwks.keys[0].n, e: not valid base64url",
            ),
            (
                serde_json::json!({ "keys": [{ "kty": "RSA", "kid": 5 }] }),
                "jwks.keys[0].kid: not a string",
            ),
            (
                serde_json::json!({ "keys": [{ "kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB" }] }),
                "jwks.keys[0].alg: `ES256` cannot be used with a `RSA` key",
            ),
            (
                serde_json::json!({ "keys": [{ "kty": "EC", "alg": "ES384", "crv": "P-256", "x": "AQAB", "y": "AQAB" }] }),
                "jwks.keys[0].alg: `ES384` cannot be used with a `EC` key on that curve",
            ),
            (
                serde_json::json!({ "keys": [{ "kty": "oct", "k": "" }] }),
                "jwks.keys[0].k: must not be empty",
            ),
        ];
        for (json, expected) in cases {
            let problems = jwks_keys(json.clone(), &mut Vec::new()).expect_err("refused");
            assert!(problems[0].starts_with(expected), "{json}: {problems:?}");
        }
    }
}
