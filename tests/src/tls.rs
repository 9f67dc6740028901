//! TLS for tests: a test CA that issues certificates with chosen names and
//! dates, and a client that connects with a chosen SNI and ALPN and tells
//! which certificate it was served.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Reply;

/// A certificate authority that lives for one test.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: String,
    /// Its private key (PEM, PKCS#8).
    pub key: String,
    /// The certificate (DER), to recognise it on the client side.
    pub der: CertificateDer<'static>,
}

impl Issued {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`, each by a rename
    /// into place (as an operator should).
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<()> {
        for (ext, text) in [("pem", &self.cert), ("key", &self.key)] {
            let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}")))?;
        }
        Ok(())
    }
}

fn days_from_now(days: i64) -> SystemTime {
    let offset = Duration::from_secs(days.unsigned_abs() * 86_400);
    if days < 0 {
        SystemTime::now() - offset
    } else {
        SystemTime::now() + offset
    }
}

impl TestCa {
    /// A new CA with a new key.
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_before = days_from_now(-1).into();
        params.not_after = days_from_now(365).into();
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            cert: cert.der().clone(),
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, valid from `from` to `to` days from
    /// now (negative: in the past).
    pub fn issue(&self, names: &[&str], from: i64, to: i64) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.not_before = days_from_now(from).into();
        params.not_after = days_from_now(to).into();
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client certificate with the common name `cn` and the SAN URIs
    /// `uris`, valid for a year.
    pub fn issue_client(&self, cn: &str, uris: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().expect("URI")))
            .collect();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = days_from_now(-1).into();
        params.not_after = days_from_now(365).into();
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The CA's certificate (PEM), for a `client_auth` bundle.
    pub fn pem(&self) -> String {
        self.pem.clone()
    }

    /// A client configuration that trusts this CA and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        self.client_config_with(alpn, None)
    }

    /// Like [`client_config`](Self::client_config), presenting `client`'s
    /// certificate when the server asks for one.
    pub fn client_config_with(
        &self,
        alpn: &[&[u8]],
        client: Option<&Issued>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).expect("CA certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(client) => builder
                .with_client_auth_cert(
                    vec![client.der.clone()],
                    PrivateKeyDer::from_pem_slice(client.key.as_bytes()).expect("key"),
                )
                .expect("client certificate"),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A rustls server configuration serving `issued`, offering `alpn`, and
/// asking for client certificates from `clients` if given.
pub fn server_config(
    issued: &Issued,
    clients: Option<&TestCa>,
    alpn: &[&[u8]],
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.clone()).expect("CA");
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("verifier"),
            )
        }
    };
    let key = PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).expect("key");
    let mut config = builder
        .with_single_cert(vec![issued.der.clone()], key)
        .expect("server certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What a TLS request saw besides the reply.
#[derive(Debug)]
pub struct Session {
    /// The protocol ALPN settled on.
    pub alpn: Option<Vec<u8>>,
    /// The leaf certificate the server presented.
    pub served: CertificateDer<'static>,
}

/// Connects to `addr` with SNI `server_name`, verifying against `config`,
/// and sends `GET path` over the protocol ALPN settled on (HTTP/2 for `h2`,
/// else HTTP/1.1), on a connection of its own.
pub async fn get(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> anyhow::Result<(Session, Reply)> {
    let request = Request::get(format!("https://{server_name}{path}"));
    get_with(addr, server_name, config, request).await
}

/// Like [`get`], sending the request `builder` makes (an absolute URI; an
/// empty body).
pub async fn get_with(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    builder: http::request::Builder,
) -> anyhow::Result<(Session, Reply)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let stream = TlsConnector::from(config).connect(name, tcp).await?;
    let (_, conn) = stream.get_ref();
    let session = Session {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        served: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no server certificate"))?,
    };
    let h2 = session.alpn.as_deref() == Some(b"h2");
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        let request = builder
            .version(Version::HTTP_2)
            .body(Empty::<Bytes>::new())?;
        sender.send_request(request).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        let mut request = builder.body(Empty::<Bytes>::new())?;
        let host = request.uri().authority().map(|a| a.to_string());
        if let Some(pq) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = pq.as_str().parse()?;
        }
        if let Some(host) = host {
            request
                .headers_mut()
                .insert(http::header::HOST, host.parse()?);
        }
        sender.send_request(request).await?
    };
    let (head, body) = response.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((
        session,
        Reply {
            status: head.status,
            headers: head.headers,
            body: collected.to_bytes(),
            trailers,
        },
    ))
}
