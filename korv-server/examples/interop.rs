//! A library server with the routes korv 0.2.1's clients are tested against
//! (`tests/legacy/`): the same listener serves them and version-1 clients.
//!
//! ```sh
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_host_key
//! cargo run -p korv-server --example interop -- /tmp/korv_host_key ~/.ssh/authorized_keys
//! ```
//!
//! It listens on 127.0.0.1, on the port given as a third argument or any free
//! one, prints `listening on ADDRESS` on stdout, and stops on Ctrl-C or
//! SIGTERM. Routes:
//!
//! - `GET /hello`: `{"msg": "Hello World!"}`.
//! - `/echo`, every verb: the verb, resource and body.
//! - `/notes/{id}`: an in-memory store (`STORE` 201, `GET`, `UPDATE`,
//!   `DELETE`; 404 when the note is missing).
//! - `GET /fail`: a handler error with a cause, so a 500 with a traceback.
//! - `GET /big/{n}`: `n` characters that do not compress.
//! - `GET /slow/{ms}`: answers after `ms` milliseconds (at most 10 s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use korv_server::{KorvServer, Request, Verb};
use serde_json::{Value, json};

type Notes = Arc<Mutex<HashMap<String, Value>>>;

async fn hello(_req: Request) -> Value {
    json!({"msg": "Hello World!"})
}

async fn echo(req: Request) -> Value {
    json!({"verb": req.verb().as_str(), "resource": req.resource(), "body": req.body_value()})
}

async fn note(req: Request, notes: Notes) -> (u16, Value) {
    let id = req.param("id").unwrap_or_default().to_owned();
    let mut notes = notes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let missing = || (404, json!({"message": format!("no note {id}")}));
    match req.verb() {
        Verb::Store => {
            notes.insert(id.clone(), req.body_value());
            (201, json!({"resource": req.resource()}))
        }
        Verb::Update => match notes.get_mut(&id) {
            Some(note) => {
                *note = req.body_value();
                (200, note.clone())
            }
            None => missing(),
        },
        Verb::Get => notes
            .get(&id)
            .map_or_else(missing, |note| (200, note.clone())),
        Verb::Delete => notes.remove(&id).map_or_else(missing, |note| (200, note)),
        // Request handlers never get the verbs of watches.
        Verb::Watch | Verb::Unwatch => (405, json!({"message": "not a request verb"})),
    }
}

async fn fail(_req: Request) -> anyhow::Result<Value> {
    let cause: Result<Value, std::io::Error> = Err(std::io::Error::other("the disk is full"));
    cause.context("could not save the note")
}

async fn big(req: Request) -> Value {
    let len: usize = req.param("n").and_then(|n| n.parse().ok()).unwrap_or(0);
    // A xorshift sequence in hex: text that deflate cannot shrink much.
    let mut state = 0x9e37_79b9_u32;
    let text: String = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            char::from_digit(state % 16, 16).unwrap_or('0')
        })
        .collect();
    json!({ "text": text })
}

async fn slow(req: Request) -> Value {
    let ms: u64 = req
        .param("ms")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
        .min(10_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    json!({ "waited_ms": ms })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(host_key), Some(authorized_keys)) = (args.next(), args.next()) else {
        eprintln!("usage: interop HOST_KEY AUTHORIZED_KEYS [PORT]");
        std::process::exit(2);
    };
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let mut server = KorvServer::with_state(Notes::default())
        .host_key_file(host_key)
        .authorized_keys_file(authorized_keys)
        .listen(([127, 0, 0, 1], port).into());
    server.add_callback(Verb::Get, "/hello", hello);
    for verb in Verb::ALL {
        server.add_callback(verb, "/echo", echo);
        server.add_callback(verb, "/notes/{id}", note);
    }
    server.add_callback(Verb::Get, "/fail", fail);
    server.add_callback(Verb::Get, "/big/{n}", big);
    server.add_callback(Verb::Get, "/slow/{ms}", slow);
    let bound = server.bind().await?;
    println!("listening on {}", bound.local_addr());
    let handle = bound.shutdown_handle();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        handle.shutdown();
    });
    bound.run().await?;
    Ok(())
}
