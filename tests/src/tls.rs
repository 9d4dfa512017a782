//! Certificates made in the test (rcgen) and a partner receiver served over TLS by
//! rustls (a TLS stack other than the dispatcher's OpenSSL) that can require a client
//! certificate, recording every handshake: which client certificate it saw, or why it
//! refused.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// A certificate and its key, as PEM (the key PKCS#8), and the certificate's
/// `sha256:<hex>` fingerprint.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    pub fingerprint: String,
}

pub fn fingerprint(der: &[u8]) -> String {
    let hex: String = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn issue(&self, names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose) -> Pair {
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            fingerprint: fingerprint(cert.der()),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Pair {
        self.issue(
            vec!["127.0.0.1".into(), "localhost".into()],
            "partner server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, cn: &str) -> Pair {
        self.issue(Vec::new(), cn, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// One TLS handshake the receiver saw: the client certificate's fingerprint, or why it
/// refused the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    Accepted { client_cert: Option<String> },
    Refused(String),
}

/// A TCP listener that speaks TLS (rustls) for axum, recording handshakes.
pub struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsListener")
    }
}

impl TlsListener {
    /// Listens on 127.0.0.1 (any port) with `server`'s certificate; with `client_ca`,
    /// only clients presenting a certificate that CA signed get through.
    pub async fn bind(
        server: &Pair,
        client_ca: Option<&TestCa>,
    ) -> (Self, Arc<Mutex<Vec<Handshake>>>) {
        // (ring: aws-lc-rs needs cmake to build; test certificates need no post-quantum
        // key exchange.)
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der()).expect("client CA");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            rustls::pki_types::pem::PemObject::from_pem_slice(server.key_pem.as_bytes())
                .map(|k: PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec())
                .expect("server key"),
        ));
        let config = builder
            .with_single_cert(vec![CertificateDer::from(server.der.clone())], key)
            .expect("server config");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                tcp,
                acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                handshakes: Arc::clone(&handshakes),
            },
            handshakes,
        )
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.acceptor.accept(tcp))
                    .await;
            let mut seen = self.handshakes.lock().unwrap_or_else(|p| p.into_inner());
            match handshake {
                Ok(Ok(tls)) => {
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| fingerprint(c));
                    seen.push(Handshake::Accepted { client_cert });
                    return (tls, addr);
                }
                Ok(Err(e)) => seen.push(Handshake::Refused(e.to_string())),
                Err(_) => seen.push(Handshake::Refused("handshake timed out".into())),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
