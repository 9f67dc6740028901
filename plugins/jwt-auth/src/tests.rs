//! Unit tests of the plugin's decisions, with tokens signed by the test keys
//! under `tests/tests/data/jwt/` (test-only keys made with `openssl`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use portcullis_plugin_kit::testing::{self, continued, json_body, replied};
use serde_json::json;

use super::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/tests/data/jwt/");
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const NOW_MS: u64 = 1_700_000_000_000;
const NOW: u64 = NOW_MS / 1000;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DATA}{name}")).expect("test key")
}

fn plugin(config: Value) -> JwtAuth {
    testing::valid(config, Config::build).plugin
}

/// A plugin accepting RS256 with the first RSA key, checking issuer and
/// audience, with the usual claim mappings; `extra` overrides fields.
fn rsa_plugin(extra: Value) -> JwtAuth {
    let mut config = json!({
        "algorithms": ["RS256"],
        "keys": [{ "pem": read("rsa_public.pem") }],
        "issuer": "https://idp.example",
        "audience": "orders",
        "roles_claim": "roles",
        "tenant_claim": "org",
        "claims_to_headers": { "sub": "x-user", "email": "x-email" },
    });
    if let (Some(base), Value::Object(extra)) = (config.as_object_mut(), extra) {
        base.extend(extra);
    }
    plugin(config)
}

/// The signing key for `alg` from the test keys (HMAC: [`SECRET`]).
fn signing_key(alg: Algorithm) -> EncodingKey {
    let pem = |name: &str| read(name).into_bytes();
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(SECRET.as_bytes()).expect("secret")
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec_private.pem")).expect("ec key"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed25519_private.pem")).expect("ed key"),
        _ => EncodingKey::from_rsa_pem(&pem("rsa_private.pem")).expect("rsa key"),
    }
}

fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signs")
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    sign_with(alg, None, &signing_key(alg), claims)
}

fn good_claims() -> Value {
    json!({
        "iss": "https://idp.example",
        "aud": "orders",
        "sub": "alice",
        "email": "alice@example.com",
        "roles": ["admin", "ops"],
        "org": "acme",
        "iat": NOW,
        "nbf": NOW - 10,
        "exp": NOW + 300,
    })
}

fn claims_with(field: &str, value: Value) -> Value {
    let mut claims = good_claims();
    if value.is_null() {
        claims.as_object_mut().expect("object").remove(field);
    } else {
        claims[field] = value;
    }
    claims
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The reply, its `WWW-Authenticate` value and its JSON message.
fn rejected(action: Action) -> (Reply, String, String) {
    let reply = replied(action);
    let message = json_body(&reply)["message"]
        .as_str()
        .expect("a message")
        .to_owned();
    let challenge = reply
        .header_value("www-authenticate")
        .expect("a challenge")
        .to_owned();
    (reply, challenge, message)
}

/// The `error_description` of a rejected request.
fn failure(auth: &JwtAuth, token: &str, now_ms: u64) -> String {
    let (reply, challenge, message) =
        rejected(auth.authenticate(Some(&bearer(token)), &[], now_ms));
    assert_eq!(reply.status, 401);
    assert!(
        challenge.starts_with(
            r#"Bearer realm="portcullis", error="invalid_token", error_description=""#
        ),
        "{challenge}"
    );
    let description = challenge
        .split("error_description=\"")
        .nth(1)
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("a description")
        .to_owned();
    assert_eq!(message, description);
    description
}

#[test]
fn a_valid_rs256_token_attaches_identity_and_claim_headers() {
    let auth = rsa_plugin(json!({}));
    let token = sign(Algorithm::RS256, &good_claims());
    let changes = continued(auth.authenticate(Some(&bearer(&token)), &[], NOW_MS));
    assert_eq!(
        changes.identity,
        Some(
            Identity::new("alice")
                .roles(["admin", "ops"])
                .tenant("acme")
        )
    );
    assert_eq!(
        changes.attributes,
        [("consumer".to_owned(), "alice".to_owned())]
    );
    assert_eq!(
        changes.remove_headers,
        ["authorization", "x-email", "x-user"]
    );
    assert_eq!(
        changes.set_headers,
        [
            ("x-email".to_owned(), "alice@example.com".to_owned()),
            ("x-user".to_owned(), "alice".to_owned()),
        ]
    );
}

#[test]
fn every_supported_algorithm_verifies() {
    let cases = [
        (Algorithm::HS256, json!({ "secret": SECRET })),
        (Algorithm::HS384, json!({ "secret": SECRET })),
        (
            Algorithm::HS512,
            json!({ "secret_base64": URL_SAFE_NO_PAD.encode(SECRET) }),
        ),
        (Algorithm::RS256, json!({ "pem": read("rsa_public.pem") })),
        (Algorithm::RS384, json!({ "pem": read("rsa_public.pem") })),
        (Algorithm::RS512, json!({ "pem": read("rsa_public.pem") })),
        (Algorithm::PS256, json!({ "pem": read("rsa_public.pem") })),
        (Algorithm::PS384, json!({ "pem": read("rsa_public.pem") })),
        (Algorithm::PS512, json!({ "pem": read("rsa_public.pem") })),
        (Algorithm::ES256, json!({ "pem": read("ec_public.pem") })),
        (
            Algorithm::EdDSA,
            json!({ "pem": read("ed25519_public.pem") }),
        ),
    ];
    for (alg, key) in cases {
        let auth = plugin(json!({ "algorithms": [format!("{alg:?}")], "keys": [key] }));
        let token = sign(alg, &good_claims());
        let changes = continued(auth.authenticate(Some(&bearer(&token)), &[], NOW_MS));
        assert_eq!(
            changes.identity.map(|i| i.consumer).as_deref(),
            Some("alice"),
            "{alg:?}"
        );
    }
}

#[test]
fn expiry_and_not_before_follow_the_given_clock() {
    let auth = rsa_plugin(json!({ "leeway_seconds": 0 }));
    let token = sign(Algorithm::RS256, &good_claims());
    assert!(matches!(
        auth.authenticate(Some(&bearer(&token)), &[], NOW_MS + 299_999),
        Action::Continue(_)
    ));
    assert_eq!(
        failure(&auth, &token, NOW_MS + 300_000),
        "the token has expired"
    );
    assert_eq!(
        failure(&auth, &token, NOW_MS - 10_001),
        "the token is not valid yet"
    );

    let lenient = rsa_plugin(json!({ "leeway_seconds": 60 }));
    assert!(matches!(
        lenient.authenticate(Some(&bearer(&token)), &[], NOW_MS + 359_999),
        Action::Continue(_)
    ));
    assert_eq!(
        failure(&lenient, &token, NOW_MS + 360_000),
        "the token has expired"
    );
}

#[test]
fn issuer_audience_and_required_claims_are_enforced() {
    let auth = rsa_plugin(json!({ "required_claims": ["exp", "sub"] }));
    let cases = [
        (
            claims_with("iss", json!("https://evil.example")),
            "the token's issuer is not accepted",
        ),
        (
            claims_with("iss", Value::Null),
            "the token has no `iss` claim",
        ),
        (
            claims_with("aud", json!("billing")),
            "the token's audience is not accepted",
        ),
        (
            claims_with("aud", json!(["billing", "web"])),
            "the token's audience is not accepted",
        ),
        (
            claims_with("aud", Value::Null),
            "the token has no `aud` claim",
        ),
        (
            claims_with("exp", Value::Null),
            "the token has no `exp` claim",
        ),
        (
            claims_with("sub", Value::Null),
            "the token has no `sub` claim",
        ),
    ];
    for (claims, expected) in cases {
        let token = sign(Algorithm::RS256, &claims);
        assert_eq!(failure(&auth, &token, NOW_MS), expected, "{claims}");
    }
    let many = sign(
        Algorithm::RS256,
        &claims_with("aud", json!(["billing", "orders"])),
    );
    assert!(matches!(
        auth.authenticate(Some(&bearer(&many)), &[], NOW_MS),
        Action::Continue(_)
    ));
}

/// RFC 7519 §4.1.3: every element of an `aud` array is a StringOrURI. A
/// signed token whose `aud` holds anything else is malformed, even when
/// another element is the accepted audience; the same for the other typed
/// registered claims, checked or not.
#[test]
fn a_registered_claim_of_the_wrong_type_is_an_invalid_token() {
    let auth = rsa_plugin(json!({}));
    let cases = [
        (
            claims_with("aud", json!(["orders", 5])),
            "the `aud` claim is not a string or an array of strings",
        ),
        (
            claims_with("aud", json!(["orders", null])),
            "the `aud` claim is not a string or an array of strings",
        ),
        (
            claims_with("aud", json!(["orders", { "aud": "orders" }])),
            "the `aud` claim is not a string or an array of strings",
        ),
        (
            claims_with("sub", json!(1234)),
            "the `sub` claim is not a string",
        ),
        (
            claims_with("iat", json!("yesterday")),
            "the `iat` claim is not a number",
        ),
    ];
    for (claims, expected) in cases {
        let token = sign(Algorithm::RS256, &claims);
        assert_eq!(failure(&auth, &token, NOW_MS), expected, "{claims}");
    }
    // No issuer or audience configured: the types are still checked.
    let lax = plugin(json!({ "algorithms": ["HS256"], "keys": [{ "secret": SECRET }] }));
    let token = sign(Algorithm::HS256, &claims_with("iss", json!({ "id": 1 })));
    assert_eq!(
        failure(&lax, &token, NOW_MS),
        "the `iss` claim is not a string"
    );
}

#[test]
fn unsigned_tokens_are_refused() {
    let auth = plugin(
        json!({ "algorithms": ["HS256", "RS256"], "keys": [{ "secret": SECRET }, { "pem": read("rsa_public.pem") }] }),
    );
    let payload = URL_SAFE_NO_PAD.encode(good_claims().to_string());
    for alg in ["none", "None", "NONE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "typ": "JWT" }).to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            assert_eq!(
                failure(&auth, &token, NOW_MS),
                "unsigned tokens (`alg` = `none`) are not accepted"
            );
        }
    }
}

#[test]
fn hmac_tokens_signed_with_the_rsa_public_key_are_refused() {
    // The classic confusion: the attacker signs HS256 with the server's
    // public key PEM as the HMAC secret.
    let public_pem = read("rsa_public.pem");
    let forged = sign_with(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(public_pem.as_bytes()).expect("secret"),
        &good_claims(),
    );
    let rsa_only = rsa_plugin(json!({}));
    assert_eq!(
        failure(&rsa_only, &forged, NOW_MS),
        "the algorithm `HS256` is not accepted"
    );

    // Even where HS256 is accepted (with its own secret), the RSA key is
    // never used as an HMAC secret.
    let both = rsa_plugin(json!({
        "algorithms": ["RS256", "HS256"],
        "keys": [{ "pem": public_pem }, { "secret": SECRET }],
    }));
    assert_eq!(failure(&both, &forged, NOW_MS), "the signature is invalid");
    let genuine = sign(Algorithm::HS256, &good_claims());
    assert!(matches!(
        both.authenticate(Some(&bearer(&genuine)), &[], NOW_MS),
        Action::Continue(_)
    ));
}

#[test]
fn algorithms_outside_the_list_are_refused() {
    let auth = rsa_plugin(json!({}));
    let ps = sign(Algorithm::PS256, &good_claims());
    assert_eq!(
        failure(&auth, &ps, NOW_MS),
        "the algorithm `PS256` is not accepted"
    );
    let header = URL_SAFE_NO_PAD.encode(json!({ "alg": "XS\"9\u{7}" }).to_string());
    let weird = format!("{header}.e30.c2ln");
    assert_eq!(
        failure(&auth, &weird, NOW_MS),
        "the algorithm `XS'9?` is not accepted"
    );
}

#[test]
fn tampered_and_malformed_tokens_are_refused() {
    let auth = rsa_plugin(json!({}));
    let token = sign(Algorithm::RS256, &good_claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = URL_SAFE_NO_PAD.encode(claims_with("sub", json!("root")).to_string());
    parts[1] = &forged_payload;
    assert_eq!(
        failure(&auth, &parts.join("."), NOW_MS),
        "the signature is invalid"
    );

    let other_key = sign_with(
        Algorithm::RS256,
        None,
        &EncodingKey::from_rsa_pem(read("rsa2_private.pem").as_bytes()).expect("rsa2"),
        &good_claims(),
    );
    assert_eq!(
        failure(&auth, &other_key, NOW_MS),
        "the signature is invalid"
    );

    let header = URL_SAFE_NO_PAD.encode(json!({ "alg": "RS256" }).to_string());
    let crit = URL_SAFE_NO_PAD.encode(json!({ "alg": "RS256", "crit": ["exp"] }).to_string());
    let cases = [
        ("not-a-token".to_owned(), "the token is malformed"),
        ("a.b".to_owned(), "the token is malformed"),
        (
            "a.b.c.d.e".to_owned(),
            "encrypted tokens (JWE) are not supported",
        ),
        ("!!!.e30.c2ln".to_owned(), "the token is malformed"),
        (
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
            "the token is malformed",
        ),
        (
            format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("{}")),
            "the token header has no `alg`",
        ),
        (format!("{header}.!!!.c2ln"), "the signature is invalid"),
        (
            format!("{crit}.e30.c2ln"),
            "the token has critical header parameters (`crit`), which are not supported",
        ),
    ];
    for (token, expected) in cases {
        assert_eq!(failure(&auth, &token, NOW_MS), expected, "{token}");
    }
}

#[test]
fn jwks_keys_are_selected_by_kid() {
    let auth = plugin(json!({
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "jwks": read("jwks.json"),
    }));
    let rsa2 = EncodingKey::from_rsa_pem(read("rsa2_private.pem").as_bytes()).expect("rsa2");
    let by_kid = sign_with(Algorithm::RS256, Some("rsa-2"), &rsa2, &good_claims());
    assert!(matches!(
        auth.authenticate(Some(&bearer(&by_kid)), &[], NOW_MS),
        Action::Continue(_)
    ));

    let wrong_kid = sign_with(Algorithm::RS256, Some("rsa-1"), &rsa2, &good_claims());
    assert_eq!(
        failure(&auth, &wrong_kid, NOW_MS),
        "the signature is invalid"
    );

    let unknown = sign_with(Algorithm::RS256, Some("rsa-9"), &rsa2, &good_claims());
    assert_eq!(
        failure(&auth, &unknown, NOW_MS),
        "no key matches the token's key id (`kid`)"
    );

    // Without a kid, every key of the algorithm is tried.
    let no_kid = sign_with(Algorithm::RS256, None, &rsa2, &good_claims());
    assert!(matches!(
        auth.authenticate(Some(&bearer(&no_kid)), &[], NOW_MS),
        Action::Continue(_)
    ));

    for (alg, kid) in [(Algorithm::ES256, "ec-1"), (Algorithm::EdDSA, "ed-1")] {
        let token = sign_with(alg, Some(kid), &signing_key(alg), &good_claims());
        assert!(
            matches!(
                auth.authenticate(Some(&bearer(&token)), &[], NOW_MS),
                Action::Continue(_)
            ),
            "{alg:?}"
        );
    }
    // A kid of a key of another algorithm does not help.
    let mismatch = sign_with(
        Algorithm::ES256,
        Some("rsa-1"),
        &signing_key(Algorithm::ES256),
        &good_claims(),
    );
    assert_eq!(
        failure(&auth, &mismatch, NOW_MS),
        "no key matches the token's key id (`kid`)"
    );
}

#[test]
fn a_key_without_a_kid_serves_tokens_with_any_kid() {
    let auth = rsa_plugin(json!({}));
    let token = sign_with(
        Algorithm::RS256,
        Some("2024-01"),
        &signing_key(Algorithm::RS256),
        &good_claims(),
    );
    assert!(matches!(
        auth.authenticate(Some(&bearer(&token)), &[], NOW_MS),
        Action::Continue(_)
    ));
}

#[test]
fn tokens_from_a_cookie_and_a_custom_header() {
    let auth = rsa_plugin(json!({ "cookie": "jwt" }));
    let token = sign(Algorithm::RS256, &good_claims());
    let jar = vec![
        format!("theme=dark; jwt={token}; lang=en"),
        "a=1".to_owned(),
    ];
    let changes = continued(auth.authenticate(None, &jar, NOW_MS));
    assert_eq!(
        changes.identity.map(|i| i.consumer).as_deref(),
        Some("alice")
    );
    assert_eq!(changes.remove_headers[0], "cookie");
    assert_eq!(
        changes.add_headers,
        [
            ("cookie".to_owned(), "theme=dark; lang=en".to_owned()),
            ("cookie".to_owned(), "a=1".to_owned())
        ]
    );
    assert!(!changes.remove_headers.contains(&"authorization".to_owned()));

    // The header comes first; a Basic header is not a token.
    let from_header =
        continued(auth.authenticate(Some(&bearer(&token)), &["jwt=garbage".to_owned()], NOW_MS));
    assert!(from_header.add_headers.is_empty());
    assert_eq!(from_header.remove_headers[0], "authorization");
    assert!(matches!(
        auth.authenticate(Some("Basic YTpi"), &jar, NOW_MS),
        Action::Continue(_)
    ));

    let custom = rsa_plugin(json!({ "header": "X-Token", "hide_credentials": false }));
    for value in [token.clone(), bearer(&token)] {
        let changes = continued(custom.authenticate(Some(&value), &[], NOW_MS));
        assert_eq!(
            changes.remove_headers,
            ["x-email", "x-user"],
            "the token is kept"
        );
    }
}

#[test]
fn a_missing_token_gets_a_challenge_without_an_error_code() {
    let auth = rsa_plugin(json!({ "cookie": "jwt", "realm": "orders" }));
    for (header, cookies) in [
        (None, vec![]),
        (Some("Basic YTpi"), vec!["other=1".to_owned()]),
        (Some("Bearer "), vec!["jwt=".to_owned()]),
    ] {
        let (reply, challenge, message) = rejected(auth.authenticate(header, &cookies, NOW_MS));
        assert_eq!(reply.status, 401);
        assert_eq!(challenge, r#"Bearer realm="orders""#);
        assert_eq!(message, "no bearer token found in request");
        assert!(
            reply
                .headers
                .contains(&("content-type".to_owned(), "application/json".to_owned()))
        );
    }
}

#[test]
fn identity_claims_in_their_various_shapes() {
    let auth = rsa_plugin(json!({
        "consumer_claim": "user.name",
        "roles_claim": "scope",
        "tenant_claim": "org.id",
    }));
    let mut claims = good_claims();
    claims["user"] = json!({ "name": "bob" });
    claims["scope"] = json!("read:orders write:orders");
    claims["org"] = json!({ "id": 42 });
    let token = sign(Algorithm::RS256, &claims);
    let changes = continued(auth.authenticate(Some(&bearer(&token)), &[], NOW_MS));
    assert_eq!(
        changes.identity,
        Some(
            Identity::new("bob")
                .roles(["read:orders", "write:orders"])
                .tenant("42")
        )
    );
    assert_eq!(
        changes.attributes,
        [("consumer".to_owned(), "bob".to_owned())]
    );

    // No roles or tenant claim: no roles, no tenant.
    let plain = sign(Algorithm::RS256, &{
        let mut c = claims.clone();
        c.as_object_mut().expect("object").remove("scope");
        c.as_object_mut().expect("object").remove("org");
        c
    });
    let changes = continued(auth.authenticate(Some(&bearer(&plain)), &[], NOW_MS));
    assert_eq!(changes.identity, Some(Identity::new("bob")));

    let cases = [
        (
            json!({ "user": { "name": "" } }),
            "the `user.name` claim is not a non-empty string",
        ),
        (
            json!({ "user": { "name": ["x"] } }),
            "the `user.name` claim is not a non-empty string",
        ),
        (
            json!({ "user": null }),
            "the token has no `user.name` claim",
        ),
        (
            json!({ "scope": ["a", 1] }),
            "the `scope` claim is not an array of strings or a space-separated string",
        ),
        (
            json!({ "org": { "id": true } }),
            "the `org.id` claim is not a string",
        ),
    ];
    for (patch, expected) in cases {
        let mut c = claims.clone();
        if let (Some(c), Value::Object(patch)) = (c.as_object_mut(), patch) {
            c.extend(patch);
        }
        let token = sign(Algorithm::RS256, &c);
        assert_eq!(failure(&auth, &token, NOW_MS), expected);
    }
}

#[test]
fn claim_headers_drop_spoofed_values_and_unsafe_claims() {
    let auth = rsa_plugin(
        json!({ "claims_to_headers": { "email": "x-email", "roles": "x-roles", "missing": "x-missing" } }),
    );
    let token = sign(
        Algorithm::RS256,
        &claims_with("email", json!("a\r\nx-admin: 1")),
    );
    let changes = continued(auth.authenticate(Some(&bearer(&token)), &[], NOW_MS));
    assert_eq!(
        changes.remove_headers,
        ["authorization", "x-email", "x-missing", "x-roles"]
    );
    assert_eq!(
        changes.set_headers,
        [("x-roles".to_owned(), "admin,ops".to_owned())]
    );
}

#[test]
fn descriptions_stay_within_rfc_6750_characters() {
    assert_eq!(description_text("a \"b\" \\c\u{e9}\n"), "a 'b' 'c??");
    assert_eq!(printable("ab\u{1}cdef", 4), "ab?c");
}

/// Asserts that `auth` lets a request with `token` go on at `now_ms`.
fn accepts(auth: &JwtAuth, token: &str, now_ms: u64) {
    let action = auth.authenticate(Some(&bearer(token)), &[], now_ms);
    assert!(matches!(action, Action::Continue(_)), "{action:?}");
}

/// The number of verifications `auth` remembers.
fn cached(auth: &JwtAuth) -> usize {
    auth.cache.borrow().len()
}

#[test]
fn a_repeated_token_is_answered_from_the_cache_with_the_same_changes() {
    let auth = rsa_plugin(json!({}));
    let token = sign(Algorithm::RS256, &good_claims());
    let first = continued(auth.authenticate(Some(&bearer(&token)), &[], NOW_MS));
    assert_eq!(cached(&auth), 1);
    let second = continued(auth.authenticate(Some(&bearer(&token)), &[], NOW_MS + 1_000));
    assert_eq!(first, second);
    assert_eq!(cached(&auth), 1);

    // The same token from a cookie: the token is stripped from where this
    // request carried it, not from where the cached one did.
    let cookie = rsa_plugin(json!({ "cookie": "jwt" }));
    accepts(&cookie, &token, NOW_MS);
    let jar = [format!("theme=dark; jwt={token}")];
    let from_cookie = continued(cookie.authenticate(None, &jar, NOW_MS));
    assert_eq!(cached(&cookie), 1, "a hit");
    assert_eq!(from_cookie.remove_headers, ["cookie", "x-email", "x-user"]);
    assert_eq!(
        from_cookie.add_headers,
        [("cookie".to_owned(), "theme=dark".to_owned())]
    );
}

#[test]
fn a_hit_does_not_verify_again() {
    let auth = rsa_plugin(json!({}));
    // An entry no key would confirm: only the cache can accept it.
    let planted = Verified {
        identity: Identity::new("planted"),
        claim_headers: vec![None, Some("planted".to_owned())],
        exp: Some((NOW + 300) as f64),
        nbf: None,
    };
    let key = auth.cache.borrow().key(&[b"cached.only.token"]);
    auth.cache.borrow_mut().insert(key, planted, NOW_MS, None);
    let changes = continued(auth.authenticate(Some(&bearer("cached.only.token")), &[], NOW_MS));
    assert_eq!(changes.identity, Some(Identity::new("planted")));
    assert_eq!(
        changes.set_headers,
        [("x-user".to_owned(), "planted".to_owned())]
    );
    assert_eq!(
        failure(&auth, "cached.only.tokem", NOW_MS),
        "the token is malformed",
        "one byte off misses"
    );
}

#[test]
fn a_cached_token_expires_and_not_before_as_an_uncached_one() {
    let cached_auth = rsa_plugin(json!({ "leeway_seconds": 0, "cache_ttl_seconds": 3600 }));
    let uncached = rsa_plugin(json!({ "leeway_seconds": 0, "cache_size": 0 }));
    let token = sign(Algorithm::RS256, &good_claims());
    for auth in [&cached_auth, &uncached] {
        accepts(auth, &token, NOW_MS);
        accepts(auth, &token, NOW_MS + 299_999);
    }
    assert_eq!(cached(&cached_auth), 1);
    assert_eq!(cached(&uncached), 0, "cache_size = 0 turns it off");
    for auth in [&cached_auth, &uncached] {
        assert_eq!(
            failure(auth, &token, NOW_MS + 300_000),
            "the token has expired",
            "exp = NOW + 300, although the TTL is an hour"
        );
    }
    assert_eq!(cached(&cached_auth), 0, "the entry ended at exp");

    // A hit is checked against `nbf` too (a clock that went back).
    let early = rsa_plugin(json!({ "leeway_seconds": 0 }));
    accepts(&early, &token, NOW_MS);
    assert_eq!(
        failure(&early, &token, NOW_MS - 10_001),
        "the token is not valid yet"
    );
    assert_eq!(cached(&early), 1, "still held: it is the clock that moved");
    assert_eq!(
        failure(&uncached, &token, NOW_MS - 10_001),
        "the token is not valid yet"
    );
}

#[test]
fn a_cached_token_expires_by_ttl() {
    let auth = rsa_plugin(json!({ "cache_ttl_seconds": 10 }));
    let token = sign(Algorithm::RS256, &good_claims());
    accepts(&auth, &token, NOW_MS);
    let key = auth.cache.borrow().key(&[token.as_bytes()]);
    assert!(auth.cache.borrow_mut().get(&key, NOW_MS + 9_999).is_some());
    assert!(auth.cache.borrow_mut().get(&key, NOW_MS + 10_000).is_none());
    // Verified again, and remembered again.
    accepts(&auth, &token, NOW_MS + 10_000);
    assert!(auth.cache.borrow_mut().get(&key, NOW_MS + 19_999).is_some());
}

#[test]
fn a_cache_entry_ends_before_the_tokens_exp() {
    let verified = |exp| Verified {
        identity: Identity::new("alice"),
        claim_headers: Vec::new(),
        exp,
        nbf: None,
    };
    assert_eq!(verified(None).not_after_ms(), None);
    assert_eq!(verified(Some(1_700.0)).not_after_ms(), Some(1_700_000));
    // A fraction is rounded down, never up past the token's life.
    assert_eq!(verified(Some(1_700.000_9)).not_after_ms(), Some(1_700_000));
    // Nonsense ends the entry at once rather than keeping it.
    for exp in [f64::NAN, -1.0, 0.0] {
        assert_eq!(verified(Some(exp)).not_after_ms(), Some(0), "{exp}");
    }
}

#[test]
fn failures_are_never_cached() {
    let auth = rsa_plugin(json!({ "leeway_seconds": 0 }));
    let bad_signature = {
        let token = sign(Algorithm::RS256, &good_claims());
        let (rest, _) = token.rsplit_once('.').expect("three parts");
        format!("{rest}.{}", URL_SAFE_NO_PAD.encode([7u8; 256]))
    };
    let cases = [
        (bad_signature, "the signature is invalid"),
        (
            sign(Algorithm::RS256, &claims_with("exp", json!(NOW))),
            "the token has expired",
        ),
        (
            sign(Algorithm::RS256, &claims_with("aud", json!("billing"))),
            "the token's audience is not accepted",
        ),
        (
            sign(Algorithm::RS256, &claims_with("sub", Value::Null)),
            "the token has no `sub` claim",
        ),
        (
            sign(Algorithm::RS256, &claims_with("roles", json!(5))),
            "the `roles` claim is not an array of strings or a space-separated string",
        ),
    ];
    for (token, expected) in cases {
        for _ in 0..2 {
            assert_eq!(failure(&auth, &token, NOW_MS), expected);
            assert_eq!(cached(&auth), 0, "{expected}");
        }
    }
}

#[test]
fn the_same_claims_with_another_signature_miss() {
    const OTHER: &str = "another-secret-of-at-least-32-bytes";
    let key = |secret: &str| EncodingKey::from_secret(secret.as_bytes()).expect("secret");
    let ours = sign_with(Algorithm::HS256, None, &key(SECRET), &good_claims());
    let theirs = sign_with(Algorithm::HS256, None, &key(OTHER), &good_claims());
    assert_eq!(
        ours.rsplit_once('.').map(|(rest, _)| rest),
        theirs.rsplit_once('.').map(|(rest, _)| rest),
        "only the signatures differ"
    );

    let config = |keys: Value| {
        json!({
            "algorithms": ["HS256"], "keys": keys,
            "issuer": "https://idp.example", "audience": "orders",
        })
    };
    let auth = plugin(config(json!([{ "secret": SECRET }])));
    accepts(&auth, &ours, NOW_MS);
    assert_eq!(
        failure(&auth, &theirs, NOW_MS),
        "the signature is invalid",
        "verified in full, not taken for the cached token"
    );
    assert_eq!(cached(&auth), 1);

    let both = plugin(config(json!([{ "secret": SECRET }, { "secret": OTHER }])));
    accepts(&both, &ours, NOW_MS);
    accepts(&both, &theirs, NOW_MS);
    assert_eq!(cached(&both), 2, "two tokens, two entries");
}

#[test]
fn the_cache_keeps_at_most_cache_size_tokens() {
    let auth = rsa_plugin(json!({ "cache_size": 3 }));
    for i in 0..6 {
        let token = sign(
            Algorithm::RS256,
            &claims_with("jti", json!(format!("id-{i}"))),
        );
        accepts(&auth, &token, NOW_MS + i);
        assert_eq!(cached(&auth), (i as usize + 1).min(3));
    }
}
