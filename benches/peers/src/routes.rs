//! The routes every peer serves, doing the same work whatever the transport:
//! they mirror `korv serve` (korv-cli/src/serve.rs).
//!
//! - `GET /hello` → 200 `{"msg":"Hello World!"}`
//! - `/echo` with any verb → 200 `{"verb":V,"resource":"/echo","body":B}`, where
//!   `B` is the request body parsed into a [`serde_json::Value`] (`null` when
//!   absent). HTTP methods map onto Korv verbs (GET → GET, POST → STORE,
//!   PUT → UPDATE, DELETE → DELETE), so a `POST /echo` answers with the very
//!   bytes a Korv `STORE /echo` gets.

use hyper::Method;
use korv_server::routing::{any, get};
use korv_server::{KorvServer, Request, Verb};
use serde_json::{Value, json};

/// The largest request body the HTTP peers accept, like Korv's default
/// largest frame (8 MiB).
pub(crate) const MAX_BODY: usize = korv_proto::DEFAULT_MAX_FRAME;

/// The body of `GET /hello`.
fn hello() -> Value {
    json!({"msg": "Hello World!"})
}

/// The body of an `/echo` answer.
fn echo(verb: Verb, resource: &str, body: Value) -> Value {
    // Built by hand: `json!` would copy `body` (it serializes each value).
    let mut answer = serde_json::Map::with_capacity(3);
    answer.insert("verb".into(), Value::from(verb.as_str()));
    answer.insert("resource".into(), Value::from(resource));
    answer.insert("body".into(), body);
    Value::Object(answer)
}

/// The Korv server of the `tcp` peer, with the routes above.
pub(crate) fn korv_app() -> KorvServer {
    KorvServer::new()
        .route(
            "/echo",
            any(|req: Request| async move { echo(req.verb(), req.resource(), req.body_value()) }),
        )
        .route("/hello", get(|_req: Request| async { (200, hello()) }))
}

/// The Korv verb an HTTP method stands for on these routes.
fn verb_of(method: &Method) -> Option<Verb> {
    match *method {
        Method::GET => Some(Verb::Get),
        Method::POST => Some(Verb::Store),
        Method::PUT => Some(Verb::Update),
        Method::DELETE => Some(Verb::Delete),
        _ => None,
    }
}

/// Answers an HTTP request to the routes above: the status code and the JSON
/// body. `body` is the complete request body.
pub(crate) fn http_answer(method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
    let verb = verb_of(method);
    match (path, verb) {
        ("/hello", Some(Verb::Get)) => (200, hello()),
        ("/hello", _) => not_allowed(method, &["GET"]),
        ("/echo", Some(verb)) => {
            if body.is_empty() {
                return (200, echo(verb, path, Value::Null));
            }
            match serde_json::from_slice::<Value>(body) {
                Ok(value) => (200, echo(verb, path, value)),
                Err(err) => (
                    400,
                    json!({"message": format!("the body is not valid JSON: {err}")}),
                ),
            }
        }
        ("/echo", None) => not_allowed(method, &["GET", "POST", "PUT", "DELETE"]),
        _ => (404, json!({"message": format!("no route matches {path}")})),
    }
}

fn not_allowed(method: &Method, allow: &[&str]) -> (u16, Value) {
    (
        405,
        json!({"message": format!("{method} is not allowed here"), "allow": allow}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_echo_answer_like_korv_serve() {
        assert_eq!(
            http_answer(&Method::GET, "/hello", b""),
            (200, json!({"msg": "Hello World!"}))
        );
        let (code, body) = http_answer(&Method::POST, "/echo", br#"{"a": [1, 2]}"#);
        assert_eq!(code, 200);
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            // serde_json's map keeps its keys sorted, on every peer alike.
            r#"{"body":{"a":[1,2]},"resource":"/echo","verb":"STORE"}"#
        );
    }

    #[test]
    fn errors_have_the_right_codes() {
        assert_eq!(http_answer(&Method::POST, "/hello", b"{}").0, 405);
        assert_eq!(http_answer(&Method::POST, "/echo", b"{").0, 400);
        assert_eq!(http_answer(&Method::GET, "/nowhere", b"").0, 404);
        assert_eq!(http_answer(&Method::PATCH, "/echo", b"{}").0, 405);
    }
}
