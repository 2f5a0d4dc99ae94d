//! Printing JSON: indented and colored on a terminal, compact otherwise.

use serde_json::Value;

const KEY: &str = "\x1b[34;1m";
const STRING: &str = "\x1b[32m";
const NUMBER: &str = "\x1b[36m";
const LITERAL: &str = "\x1b[35m";
const RESET: &str = "\x1b[0m";

/// `value` as text: compact, or indented (and colored when `color`).
pub(crate) fn render(value: &Value, pretty: bool, color: bool) -> String {
    if !pretty {
        return value.to_string();
    }
    if !color {
        return serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    }
    let mut out = String::new();
    colored(value, 0, &mut out);
    out
}

fn colored(value: &Value, depth: usize, out: &mut String) {
    let pad = |n: usize| "  ".repeat(n);
    match value {
        Value::Null | Value::Bool(_) => {
            out.push_str(LITERAL);
            out.push_str(&value.to_string());
            out.push_str(RESET);
        }
        Value::Number(n) => {
            out.push_str(NUMBER);
            out.push_str(&n.to_string());
            out.push_str(RESET);
        }
        Value::String(_) => {
            out.push_str(STRING);
            out.push_str(&value.to_string());
            out.push_str(RESET);
        }
        Value::Array(items) if items.is_empty() => out.push_str("[]"),
        Value::Object(map) if map.is_empty() => out.push_str("{}"),
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                colored(item, depth + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("{\n");
            for (i, (key, item)) in map.iter().enumerate() {
                out.push_str(&pad(depth + 1));
                out.push_str(KEY);
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push_str(RESET);
                out.push_str(": ");
                colored(item, depth + 1, out);
                out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(depth));
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_pretty_and_colored_say_the_same_json() {
        let value = json!({"a": [1, "x", null, true], "b": {}});
        assert_eq!(
            render(&value, false, false),
            r#"{"a":[1,"x",null,true],"b":{}}"#
        );
        let pretty = render(&value, true, false);
        assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap(), value);
        let colored = render(&value, true, true);
        assert!(colored.contains(KEY));
        let stripped: String = colored
            .split('\x1b')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once('m').map_or("", |(_, rest)| rest)
                }
            })
            .collect();
        assert_eq!(serde_json::from_str::<Value>(&stripped).unwrap(), value);
    }
}
