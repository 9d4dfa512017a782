//! Confluent wire format: magic byte `0`, the schema id as 4 big-endian bytes, then the
//! Avro binary body.

/// The first byte of every framed record.
pub const MAGIC: u8 = 0;
/// Bytes before the Avro body.
pub const HEADER_LEN: usize = 5;

/// Why bytes are not a framed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("empty payload: expected Confluent wire format (magic byte 0, schema id, Avro body)")]
    Empty,
    #[error("payload of {0} bytes is too short for Confluent wire format (at least 6 bytes)")]
    TooShort(usize),
    #[error("first byte is {0:#04x}, expected the magic byte 0x00 of Confluent wire format")]
    BadMagic(u8),
}

/// Frames an Avro body written with schema `id`.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a framed record into its schema id and Avro body.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), FramingError> {
    match bytes {
        [] => Err(FramingError::Empty),
        [first, ..] if *first != MAGIC => Err(FramingError::BadMagic(*first)),
        b if b.len() <= HEADER_LEN => Err(FramingError::TooShort(b.len())),
        [_, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => Err(FramingError::TooShort(bytes.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_unframe_round_trip() {
        let framed = frame(0x0102_0304, b"body");
        assert_eq!(framed, [0, 1, 2, 3, 4, b'b', b'o', b'd', b'y']);
        assert_eq!(unframe(&framed), Ok((0x0102_0304, &b"body"[..])));
    }

    #[test]
    fn each_bad_framing_is_named() {
        assert_eq!(unframe(&[]), Err(FramingError::Empty));
        assert_eq!(unframe(&[0, 0, 0, 1]), Err(FramingError::TooShort(4)));
        assert_eq!(unframe(&[0, 0, 0, 0, 1]), Err(FramingError::TooShort(5)));
        assert_eq!(unframe(b"{\"json\":1}"), Err(FramingError::BadMagic(b'{')));
        assert!(FramingError::BadMagic(0x7b).to_string().contains("0x7b"));
    }
}
