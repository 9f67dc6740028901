//! `mtls_auth`: a Portcullis policy plugin that turns the client
//! certificate the gateway verified (mutual TLS, `[listeners.tls.client_auth]`)
//! into an identity: consumer, roles and tenant, the same identity the
//! other authentication plugins attach. See the README for the
//! configuration.
//!
//! The gateway has already verified the certificate (chain to the
//! listener's CAs, validity, signature); this plugin decides who it is and
//! whether this route takes it. Each consumer is matched by one of the
//! certificate's subject, a SAN DNS name, URI or e-mail address, or its
//! SHA-256 (a pin); the first consumer in config order that matches wins.
//!
//! A request without a certificate is answered `403` with
//! `{"message":"client certificate required"}`; one whose certificate
//! matches no consumer `403` with `{"message":"client certificate not
//! allowed"}`. (Not 401: there is no HTTP challenge a client could answer,
//! the credential is the TLS connection's.)

use std::collections::HashMap;

use portcullis_plugin_kit::identity::IdentityHeaders;
use portcullis_sdk::{
    Action, ClientCertificate, Identity, Policy, Reply, Request, RequestChanges, policy,
};

mod config;

use config::Config;

/// One route's `mtls_auth`, built from a validated [`Config`].
struct MtlsAuth {
    /// The identities, in config order.
    consumers: Vec<Identity>,
    /// Index into `consumers` by what the certificate must show.
    by_subject: HashMap<String, usize>,
    by_dns: HashMap<String, usize>,
    by_uri: HashMap<String, usize>,
    by_email: HashMap<String, usize>,
    by_sha256: HashMap<String, usize>,
    /// Headers that carry the identity to the upstream.
    identity_headers: IdentityHeaders,
}

#[policy]
impl Policy for MtlsAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(config.build()?.log_warnings(portcullis_sdk::log::warn))
    }

    fn on_request(&self, req: &Request) -> Action {
        self.authenticate(req.client_certificate().as_ref())
    }
}

impl MtlsAuth {
    /// The decision for a request with the verified client certificate
    /// `cert`, if the client sent one.
    fn authenticate(&self, cert: Option<&ClientCertificate>) -> Action {
        let Some(cert) = cert else {
            return Reply::message(403, "client certificate required").into();
        };
        let Some(identity) = self.consumer_of(cert) else {
            return Reply::message(403, "client certificate not allowed").into();
        };
        let changes = RequestChanges::new().authenticated(identity.clone());
        self.identity_headers.apply(changes, identity).into()
    }

    /// The first consumer, in config order, that `cert` matches.
    fn consumer_of(&self, cert: &ClientCertificate) -> Option<&Identity> {
        let lookup = |table: &HashMap<String, usize>, value: &str| table.get(value).copied();
        let dns = cert
            .dns_names
            .iter()
            .filter_map(|n| lookup(&self.by_dns, &n.to_ascii_lowercase()));
        let uris = cert.uris.iter().filter_map(|u| lookup(&self.by_uri, u));
        let emails = cert
            .emails
            .iter()
            .filter_map(|e| lookup(&self.by_email, &e.to_ascii_lowercase()));
        let first = lookup(&self.by_subject, &cert.subject)
            .into_iter()
            .chain(lookup(&self.by_sha256, &cert.sha256))
            .chain(dns)
            .chain(uris)
            .chain(emails)
            .min()?;
        self.consumers.get(first)
    }
}

#[cfg(test)]
mod tests {
    use portcullis_plugin_kit::testing::{self, continued, json_body, replied};

    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn plugin(extra: &str) -> MtlsAuth {
        let json = format!(
            r#"{{{extra}"consumers":[
                {{"consumer":"billing","uri":"spiffe://example.org/billing","roles":["service"],"tenant":"acme"}},
                {{"consumer":"ops","subject":"O=Example Corp, CN=ops"}},
                {{"consumer":"partner","dns":"Partner.Example.net"}},
                {{"consumer":"jane","email":"jane@example.org"}},
                {{"consumer":"pinned","sha256":"{}"}}
            ]}}"#,
            SHA.to_uppercase()
        );
        testing::valid(&json, Config::build).plugin
    }

    fn cert(edit: impl FnOnce(&mut ClientCertificate)) -> ClientCertificate {
        let mut cert = ClientCertificate::default();
        cert.subject = "O=Example Corp, CN=someone".into();
        cert.sha256 = "00".repeat(32);
        edit(&mut cert);
        cert
    }

    fn refused(action: Action) -> (u16, serde_json::Value) {
        let reply = replied(action);
        (reply.status, json_body(&reply))
    }

    #[test]
    fn each_kind_of_name_finds_its_consumer() {
        let auth = plugin("");
        let who = |c: ClientCertificate| continued(auth.authenticate(Some(&c))).identity;
        assert_eq!(
            who(cert(
                |c| c.uris = vec!["spiffe://example.org/billing".into()]
            )),
            Some(Identity::new("billing").roles(["service"]).tenant("acme"))
        );
        assert_eq!(
            who(cert(|c| c.subject = "O=Example Corp, CN=ops".into())),
            Some(Identity::new("ops"))
        );
        assert_eq!(
            who(cert(|c| c.dns_names = vec!["partner.example.NET".into()])),
            Some(Identity::new("partner")),
            "DNS names compare without case"
        );
        assert_eq!(
            who(cert(|c| c.emails = vec!["Jane@Example.org".into()])),
            Some(Identity::new("jane"))
        );
        assert_eq!(
            who(cert(|c| c.sha256 = SHA.into())),
            Some(Identity::new("pinned")),
            "the pin is written in any case, with or without colons"
        );
    }

    #[test]
    fn the_first_consumer_in_config_order_wins() {
        let auth = plugin("");
        let both = cert(|c| {
            c.emails = vec!["jane@example.org".into()];
            c.uris = vec!["spiffe://example.org/billing".into()];
        });
        let changes = continued(auth.authenticate(Some(&both)));
        assert_eq!(changes.identity.map(|i| i.consumer), Some("billing".into()));
        assert_eq!(
            changes.attributes,
            [("consumer".to_owned(), "billing".to_owned())]
        );
    }

    #[test]
    fn no_certificate_or_an_unknown_one_is_403() {
        let auth = plugin("");
        assert_eq!(
            refused(auth.authenticate(None)),
            (
                403,
                serde_json::json!({ "message": "client certificate required" })
            )
        );
        // A subject that only resembles a configured one.
        let close = cert(|c| c.subject = "O=Example Corp, CN=ops, OU=x".into());
        assert_eq!(
            refused(auth.authenticate(Some(&close))),
            (
                403,
                serde_json::json!({ "message": "client certificate not allowed" })
            )
        );
    }

    #[test]
    fn the_identity_goes_upstream_in_the_configured_headers() {
        let auth = plugin(r#""identity_headers":{"consumer":"x-consumer","tenant":"x-tenant"},"#);
        let changes = continued(auth.authenticate(Some(&cert(|c| {
            c.uris = vec!["spiffe://example.org/billing".into()]
        }))));
        assert_eq!(changes.remove_headers, ["x-consumer", "x-tenant"]);
        assert_eq!(
            changes.set_headers,
            [
                ("x-consumer".to_owned(), "billing".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned()),
            ]
        );
    }
}
