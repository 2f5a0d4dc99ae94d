//! Korv frames, built byte by byte without the codec under test: a 4-byte
//! big-endian length, then that many bytes of payload.

use serde_json::Value;

/// A frame whose payload is `value` as compact JSON.
pub fn frame(value: &Value) -> Vec<u8> {
    frame_bytes(value.to_string().as_bytes())
}

/// A frame whose payload is `payload` as is (valid or not), with its true
/// length.
///
/// # Panics
/// `payload` is longer than a frame's length field can say (4 GiB − 1).
pub fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a payload below 4 GiB");
    let mut bytes = Vec::with_capacity(4 + payload.len());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_big_endian_length_then_the_payload() {
        assert_eq!(frame_bytes(b"abc"), b"\0\0\0\x03abc");
        assert_eq!(frame_bytes(b""), b"\0\0\0\0");
        assert_eq!(
            frame(&serde_json::json!({"id": 1})),
            b"\0\0\0\x08{\"id\":1}"
        );
    }
}
