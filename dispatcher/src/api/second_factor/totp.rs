//! RFC 6238 time-based one-time passwords (HMAC-SHA1, 30 s steps, 6 digits: what every
//! authenticator app reads from an `otpauth://` URI) and the RFC 4648 base32 they use.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Seconds per step.
pub const PERIOD: i64 = 30;
const DIGITS: u32 = 6;
/// Steps accepted either side of now (a clock a little off, a code typed late).
const SKEW: i64 = 1;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new secret: 20 random bytes (160 bits, RFC 4226's recommendation).
pub fn generate_secret() -> Vec<u8> {
    use rand::RngCore;
    let mut bytes = vec![0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Base32 without padding, as `otpauth://` URIs carry it.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u64, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes base32 (case-insensitive, padding and spaces ignored).
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u64, 0u32);
    for c in text.bytes().filter(|c| *c != b'=' && *c != b' ') {
        let v = ALPHABET.iter().position(|a| *a == c.to_ascii_uppercase())? as u64;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// The code of `step` (RFC 4226 HOTP with the step as counter).
pub fn code(secret: &[u8], step: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let value = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    format!(
        "{:0width$}",
        value % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

/// The step `now_secs` falls in.
pub fn step_at(now_secs: i64) -> i64 {
    now_secs.div_euclid(PERIOD)
}

/// The step whose code `given` is, within one step of now; compared in constant time,
/// every candidate tried (the answer says nothing of how close a code was).
pub fn matching_step(secret: &[u8], given: &str, now_secs: i64) -> Option<i64> {
    let given = given.trim().as_bytes();
    let now = step_at(now_secs);
    let mut found = None;
    for step in now - SKEW..=now + SKEW {
        let expected = code(secret, step);
        let same = expected.len() == given.len()
            && expected
                .bytes()
                .zip(given.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// The URI an authenticator app scans: issuer `Orderhooks`, account the partner.
pub fn otpauth_uri(secret: &[u8], partner: &str) -> String {
    let label: String =
        url::form_urlencoded::byte_serialize(format!("Orderhooks:{partner}").as_bytes())
            .collect::<String>()
            .replace('+', "%20");
    format!(
        "otpauth://totp/{label}?secret={}&issuer=Orderhooks&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
        base32(secret)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_of_rfc_6238_appendix_b() {
        // SHA1 seed "12345678901234567890"; the RFC's 8-digit codes, last 6 digits.
        let seed = b"12345678901234567890";
        for (time, expected) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
        ] {
            assert_eq!(code(seed, step_at(time)), expected, "T = {time}");
        }
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_not_further() {
        let seed = b"12345678901234567890";
        let now = 1_111_111_111;
        let current = code(seed, step_at(now));
        assert_eq!(matching_step(seed, &current, now), Some(step_at(now)));
        assert_eq!(matching_step(seed, &current, now + 30), Some(step_at(now)));
        assert_eq!(matching_step(seed, &current, now + 90), None);
        assert_eq!(matching_step(seed, "12345", now), None);
        assert_eq!(matching_step(seed, "", now), None);
    }

    #[test]
    fn base32_round_trips_and_matches_rfc_4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        let secret = generate_secret();
        assert_eq!(base32_decode(&base32(&secret)), Some(secret));
        assert_eq!(base32_decode("mzxw 6ytb oi=="), Some(b"foobar".to_vec()));
        assert_eq!(base32_decode("1"), None);
    }
}
