//! A BODY argument: JSON text, `@file.json`, or `-` for stdin.

use std::io::Read;

use anyhow::Context;
use serde_json::Value;

use crate::error_reporting::UsageError;

/// BODY as JSON: text, `@file`, or `-` for stdin. A file that cannot be read
/// and text that is not JSON are usage errors.
pub(crate) fn read_body(body: &str) -> anyhow::Result<Value> {
    let (text, origin) = if body == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the body from stdin")?;
        (text, "stdin".to_owned())
    } else if let Some(path) = body.strip_prefix('@') {
        let text = std::fs::read_to_string(path)
            .map_err(|err| UsageError(format!("cannot read the body file {path}: {err}")))?;
        (text, path.to_owned())
    } else {
        (body.to_owned(), "BODY".to_owned())
    };
    serde_json::from_str(&text)
        .map_err(|err| UsageError(format!("{origin} is not valid JSON: {err}")).into())
}
