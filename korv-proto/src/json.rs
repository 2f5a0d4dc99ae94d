//! A compact JSON writer for `serde_json::Value`: byte for byte what
//! `serde_json::to_writer` writes, but it looks for characters to escape
//! eight bytes at a time, where serde_json looks at every byte. A large
//! string body (the 1 MiB echo) is mostly that scan.

use std::io::{self, Write};

use serde_json::Value;

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// Whether any byte of `word` is zero.
const fn has_zero(word: u64) -> bool {
    word.wrapping_sub(ONES) & !word & HIGHS != 0
}

/// Whether any of the eight bytes of `word` must be escaped in a JSON
/// string: a control character (below 0x20), `"` or `\`.
const fn needs_escape(word: u64) -> bool {
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    control || has_zero(word ^ (ONES * b'"' as u64)) || has_zero(word ^ (ONES * b'\\' as u64))
}

/// The escape of one byte, as serde_json writes it; `None` if it needs none.
fn escape(byte: u8) -> Option<&'static [u8]> {
    const CONTROLS: [&[u8]; 32] = [
        b"\\u0000", b"\\u0001", b"\\u0002", b"\\u0003", b"\\u0004", b"\\u0005", b"\\u0006",
        b"\\u0007", b"\\b", b"\\t", b"\\n", b"\\u000b", b"\\f", b"\\r", b"\\u000e", b"\\u000f",
        b"\\u0010", b"\\u0011", b"\\u0012", b"\\u0013", b"\\u0014", b"\\u0015", b"\\u0016",
        b"\\u0017", b"\\u0018", b"\\u0019", b"\\u001a", b"\\u001b", b"\\u001c", b"\\u001d",
        b"\\u001e", b"\\u001f",
    ];
    match byte {
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        control if control < 0x20 => CONTROLS.get(usize::from(control)).copied(),
        _ => None,
    }
}

/// Writes `text` as a JSON string.
pub(crate) fn write_str<W: Write + ?Sized>(out: &mut W, text: &str) -> io::Result<()> {
    let bytes = text.as_bytes();
    out.write_all(b"\"")?;
    let mut start = 0;
    let mut at = 0;
    loop {
        // Eight bytes at a time while none needs an escape.
        while let Some(chunk) = bytes.get(at..at + 8) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            if needs_escape(u64::from_le_bytes(word)) {
                break;
            }
            at += 8;
        }
        let Some(&byte) = bytes.get(at) else {
            break;
        };
        if let Some(escaped) = escape(byte) {
            out.write_all(bytes.get(start..at).unwrap_or_default())?;
            out.write_all(escaped)?;
            start = at + 1;
        }
        at += 1;
    }
    out.write_all(bytes.get(start..).unwrap_or_default())?;
    out.write_all(b"\"")
}

/// Writes `value` as compact JSON.
pub(crate) fn write_value<W: Write + ?Sized>(out: &mut W, value: &Value) -> io::Result<()> {
    match value {
        Value::Null => out.write_all(b"null"),
        Value::Bool(true) => out.write_all(b"true"),
        Value::Bool(false) => out.write_all(b"false"),
        Value::Number(number) => serde_json::to_writer(&mut *out, number).map_err(io::Error::other),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.write_all(b",")?;
                }
                write_value(out, item)?;
            }
            out.write_all(b"]")
        }
        Value::Object(members) => {
            out.write_all(b"{")?;
            for (n, (name, item)) in members.iter().enumerate() {
                if n > 0 {
                    out.write_all(b",")?;
                }
                write_str(out, name)?;
                out.write_all(b":")?;
                write_value(out, item)?;
            }
            out.write_all(b"}")
        }
    }
}

/// At most this many values are looked at by [`size_hint`].
const HINT_VALUES: usize = 1024;

/// A lower bound of the length of `value`'s JSON, from its first
/// [`HINT_VALUES`] values: enough to size a buffer for a body whose bulk is
/// a few long strings, without walking a large array twice.
pub(crate) fn size_hint(value: &Value) -> usize {
    fn walk(value: &Value, budget: &mut usize) -> usize {
        if *budget == 0 {
            return 0;
        }
        *budget -= 1;
        match value {
            Value::Null | Value::Bool(_) => 4,
            Value::Number(_) => 1,
            Value::String(text) => text.len() + 2,
            Value::Array(items) => {
                let mut len = 2;
                for item in items {
                    if *budget == 0 {
                        break;
                    }
                    len += walk(item, budget) + 1;
                }
                len - usize::from(!items.is_empty())
            }
            Value::Object(members) => {
                let mut len = 2;
                for (name, item) in members {
                    if *budget == 0 {
                        break;
                    }
                    len += name.len() + 4 + walk(item, budget);
                }
                len - usize::from(!members.is_empty())
            }
        }
    }
    walk(value, &mut HINT_VALUES.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ours(value: &Value) -> String {
        let mut out = Vec::new();
        write_value(&mut out, value).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn assert_as_serde_json(value: &Value) {
        assert_eq!(
            ours(value),
            serde_json::to_string(value).unwrap(),
            "for {value:?}"
        );
    }

    #[test]
    fn every_ascii_byte_at_every_place_of_a_word_is_written_as_serde_json_writes_it() {
        for byte in 0..=0x7f_u8 {
            for before in 0..17 {
                for after in [0, 1, 7, 8, 9] {
                    let text = format!(
                        "{}{}{}",
                        "a".repeat(before),
                        byte as char,
                        "z".repeat(after)
                    );
                    assert_as_serde_json(&Value::String(text));
                }
            }
        }
    }

    #[test]
    fn unicode_and_runs_of_escapes_are_written_as_serde_json_writes_them() {
        for text in [
            "",
            "é",
            "naïve café — 日本語 🎉 \u{7f} \u{80} \u{2028}",
            "\"\"\"\"\"\"\"\"\"",
            "\\\\\\\\\\\\\\\\\\\\",
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}",
            "ends with a quote\"",
            "\u{1f600}\u{1f600}\u{1f600}\"\u{1f600}",
        ] {
            assert_as_serde_json(&Value::String(text.into()));
        }
        // A pseudo-random mix of the bytes that matter, in every length up to 200.
        let alphabet = ['a', '"', '\\', '\n', '\u{1}', 'é', '🎉', ' ', '\u{1f}', '/'];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..200 {
            let text: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            assert_as_serde_json(&Value::String(text));
        }
    }

    #[test]
    fn every_kind_of_value_is_written_as_serde_json_writes_it() {
        assert_as_serde_json(&json!({
            "null": null, "yes": true, "no": false,
            "numbers": [0, -1, 1.5, -0.0, 1e300, 2.5e-8, u64::MAX, i64::MIN, 12345678901234567890_u64],
            "nested": {"a": [[], {}, [{"b\"\n": "c\\"}]], "": ""},
            "empty": [], "object": {},
            "esc\u{1}aped key": "x"
        }));
    }

    #[test]
    fn the_size_hint_is_a_lower_bound_that_counts_long_strings() {
        let body = json!({"text": "x".repeat(1 << 20), "n": 12345, "list": [1, 2, 3]});
        let hint = size_hint(&body);
        let len = ours(&body).len();
        assert!(hint <= len, "hint {hint} above the length {len}");
        assert!(hint >= 1 << 20, "hint {hint} misses the long string");
        let many = Value::Array((0..100_000).map(|n| json!(n)).collect());
        assert!(size_hint(&many) <= ours(&many).len());
        assert!(
            size_hint(&many) < 10 * HINT_VALUES,
            "a long array was walked whole"
        );
    }
}
