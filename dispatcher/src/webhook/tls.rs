//! Mutual TLS on webhook calls: the client certificate every HTTPS call presents
//! (`--client-cert`, `--client-key`), reloaded without a restart, and a subscription's
//! own CA for its partner's server (`tls.ca_pem`).
//!
//! A pair is checked before it is used: both files parse, the key is PKCS#8 and belongs
//! to the certificate, and the certificate is valid now. A pair that fails the check is
//! refused with a log line naming what is wrong, and the pair in use stays.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use openssl::pkey::PKey;
use openssl::x509::X509;
use sha2::{Digest, Sha256};

/// Where the client certificate and its key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files' modification times and sizes (a change of either reloads the pair).
pub(crate) type Stamp = [Option<(SystemTime, u64)>; 2];

/// A client certificate pair that loaded, with what the log says about it.
#[derive(Clone)]
pub struct ClientPair {
    pub identity: reqwest::Identity,
    /// `sha256:<hex>` of the certificate (DER), as a partner pins it.
    pub fingerprint: String,
    pub subject: String,
    pub not_after: String,
}

impl std::fmt::Debug for ClientPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPair")
            .field("fingerprint", &self.fingerprint)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl ClientCertFiles {
    /// The files' stamps now: a change means a rotation to load.
    pub(crate) fn stamp(&self) -> Stamp {
        [stamp_of(&self.cert), stamp_of(&self.key)]
    }

    /// Reads and checks the pair; the error names the file and what is wrong with it.
    pub fn load(&self) -> anyhow::Result<ClientPair> {
        let cert_pem = std::fs::read(&self.cert)
            .map_err(|e| anyhow::anyhow!("--client-cert {}: {e}", self.cert.display()))?;
        let key_pem = std::fs::read(&self.key)
            .map_err(|e| anyhow::anyhow!("--client-key {}: {e}", self.key.display()))?;
        let chain = X509::stack_from_pem(&cert_pem).map_err(|e| {
            anyhow::anyhow!(
                "--client-cert {}: not a PEM certificate: {e}",
                self.cert.display()
            )
        })?;
        let leaf = chain.first().ok_or_else(|| {
            anyhow::anyhow!(
                "--client-cert {}: holds no certificate",
                self.cert.display()
            )
        })?;
        if !key_pem
            .trim_ascii_start()
            .starts_with(b"-----BEGIN PRIVATE KEY-----")
        {
            anyhow::bail!(
                "--client-key {}: must be an unencrypted PKCS#8 key (`-----BEGIN PRIVATE KEY-----`); convert it with `openssl pkcs8 -topk8 -nocrypt`",
                self.key.display()
            );
        }
        let key = PKey::private_key_from_pem(&key_pem).map_err(|e| {
            anyhow::anyhow!("--client-key {}: not a PEM key: {e}", self.key.display())
        })?;
        let public = leaf.public_key()?;
        if !public.public_eq(&key) {
            anyhow::bail!(
                "--client-key {} does not belong to the certificate in --client-cert {}",
                self.key.display(),
                self.cert.display()
            );
        }
        let now = openssl::asn1::Asn1Time::days_from_now(0)?;
        if leaf.not_after() < now {
            anyhow::bail!(
                "--client-cert {}: expired on {}",
                self.cert.display(),
                leaf.not_after()
            );
        }
        if leaf.not_before() > now {
            anyhow::bail!(
                "--client-cert {}: not valid before {}",
                self.cert.display(),
                leaf.not_before()
            );
        }
        let identity = reqwest::Identity::from_pkcs8_pem(&cert_pem, key_pem.trim_ascii_start())
            .map_err(|e| anyhow::anyhow!("--client-cert/--client-key: {e}"))?;
        Ok(ClientPair {
            identity,
            fingerprint: fingerprint(&leaf.to_der()?),
            subject: subject(leaf),
            not_after: leaf.not_after().to_string(),
        })
    }
}

/// `sha256:<hex>` of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn subject(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = String::from_utf8_lossy(e.data().as_slice());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A subscription's own CA for its partner's server, parsed once: only these
/// certificates are trusted for that subscription's calls.
#[derive(Clone)]
pub struct TrustedCa {
    /// SHA-256 of the PEM text: subscriptions with the same CA share one client.
    pub digest: [u8; 32],
    pub certs: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for TrustedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedCa")
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

impl TrustedCa {
    /// Parses a PEM bundle of one or more CA certificates; the error says what is wrong.
    pub fn parse(pem: &str) -> Result<Self, String> {
        let parsed = X509::stack_from_pem(pem.as_bytes())
            .map_err(|e| format!("is not a PEM certificate: {e}"))?;
        if parsed.is_empty() {
            return Err("holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".into());
        }
        // (An expired certificate is kept, not refused: a bundle often holds an old root
        // beside the new one, and a subscription must not turn invalid on a date. The
        // handshake judges validity.)
        let mut certs = Vec::with_capacity(parsed.len());
        for c in &parsed {
            let der = c.to_der().map_err(|e| e.to_string())?;
            certs.push(reqwest::Certificate::from_der(&der).map_err(|e| e.to_string())?);
        }
        Ok(Self {
            digest: Sha256::digest(pem.as_bytes()).into(),
            certs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_that_is_not_pem_is_refused_with_why() {
        let e = TrustedCa::parse("hello").expect_err("not pem");
        assert!(
            e.contains("no PEM certificate") || e.contains("not a PEM"),
            "{e}"
        );
    }
}
