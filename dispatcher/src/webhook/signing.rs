//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`, one space-separated signature per active
//! secret, so a partner can verify with either key while a secret rotates.
//!
//! Secrets are written `whsec_<base64 key>` as in the Standard Webhooks libraries; the
//! key is the decoded bytes. Secrets never appear in `Debug` output or logs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A signing key. Its `Debug` shows only a fingerprint-free placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>`; the error says what is wrong without echoing the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("must start with `{PREFIX}`"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "is not valid base64 after `whsec_`".to_string())?;
        if key.len() < 24 {
            return Err(format!("key is {} bytes, at least 24 required", key.len()));
        }
        Ok(Self(key))
    }

    /// A fresh random secret in `whsec_` form.
    pub fn generate() -> String {
        let key: [u8; 32] = rand::random();
        format!("{PREFIX}{}", STANDARD.encode(key))
    }

    fn sign(&self, content: &[u8]) -> String {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(content);
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// The `webhook-signature` value for a message signed with every secret in `secrets`.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut content = Vec::with_capacity(id.len() + body.len() + 24);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    secrets
        .iter()
        .map(|s| format!("v1,{}", s.sign(&content)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a signed message was refused by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("timestamp {0} is outside the tolerance")]
    Timestamp(i64),
    #[error("no signature matches")]
    NoMatch,
}

/// Verifies a message the way a partner does: the timestamp within `tolerance_secs` of
/// `now`, and at least one `v1,` signature made with `secret`.
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    // Checked: a hostile timestamp such as i64::MIN must be refused, not overflow.
    let off_by = now.checked_sub(timestamp).and_then(i64::checked_abs);
    if off_by.is_none_or(|d| d > tolerance_secs) {
        return Err(VerifyError::Timestamp(timestamp));
    }
    let expected = signature_header(std::slice::from_ref(secret), id, timestamp, body);
    let expected = expected.as_bytes();
    let matches = header.split(' ').any(|candidate| {
        // Constant-time comparison of equal-length values.
        candidate.len() == expected.len()
            && candidate
                .bytes()
                .zip(expected.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test suite.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let header = signature_header(
            &[secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn one_signature_per_secret_and_each_verifies() {
        let (old, new) = (
            Secret::parse(&Secret::generate()).expect("old"),
            Secret::parse(&Secret::generate()).expect("new"),
        );
        let header = signature_header(&[old.clone(), new.clone()], "id", 100, b"body");
        assert_eq!(header.split(' ').count(), 2);
        assert_eq!(verify(&old, "id", 100, b"body", &header, 100, 300), Ok(()));
        assert_eq!(verify(&new, "id", 100, b"body", &header, 100, 300), Ok(()));
        assert_eq!(
            verify(&new, "id", 100, b"tampered", &header, 100, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&new, "id", 100, b"body", &header, 1000, 300),
            Err(VerifyError::Timestamp(100))
        );
    }

    #[test]
    fn extreme_timestamps_are_refused_not_overflowed() {
        let secret = Secret::parse(&Secret::generate()).expect("secret");
        let header = signature_header(std::slice::from_ref(&secret), "id", 100, b"body");
        for (timestamp, now) in [(i64::MIN, 100), (i64::MAX, -100), (100, i64::MIN)] {
            assert_eq!(
                verify(&secret, "id", timestamp, b"body", &header, now, 300),
                Err(VerifyError::Timestamp(timestamp))
            );
        }
    }

    #[test]
    fn bad_secrets_are_named_without_echoing_them() {
        assert!(Secret::parse("s3cr3t")
            .expect_err("prefix")
            .contains("whsec_"));
        assert!(Secret::parse("whsec_!!!")
            .expect_err("base64")
            .contains("base64"));
        assert!(Secret::parse("whsec_c2hvcnQ=")
            .expect_err("short")
            .contains("at least 24"));
        assert_eq!(
            format!("{:?}", Secret::parse(&Secret::generate()).expect("ok")),
            "Secret(redacted)"
        );
    }
}
