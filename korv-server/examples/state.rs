//! Shared state: notes kept in memory, shared by every connection.
//!
//! ```sh
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_host_key
//! cargo run -p korv-server --example state -- /tmp/korv_host_key ~/.ssh/authorized_keys
//! ```
//!
//! then, in another terminal (`korv` is `cargo run -p korv-cli --`):
//!
//! ```sh
//! korv store korv://localhost:8022/notes '{"text":"milk"}' --accept-new   # 201 {"id":1}
//! korv get korv://localhost:8022/notes/1
//! korv delete korv://localhost:8022/notes/1
//! ```
//!
//! The state is any `Clone + Send + Sync + 'static` value given to
//! `KorvServer::with_state`; each handler that takes it as its second
//! argument gets a clone, so keep it cheap to clone (an `Arc`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use korv_server::routing::get;
use korv_server::{Error, KorvServer, Request};
use serde_json::{Value, json};

/// The notes, by id, and the next id to give.
#[derive(Clone, Default)]
struct Notes {
    inner: Arc<Mutex<(u64, BTreeMap<u64, Value>)>>,
}

impl Notes {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Value>)> {
        // A handler that panicked while holding the lock left the notes as
        // they were: keep serving them.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `{id}` of the route, as a number.
fn id(req: &Request) -> Result<u64, Error> {
    req.param("id")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| Error::new(400, "a note's id is a number"))
}

async fn list(_req: Request, notes: Notes) -> Value {
    json!(notes.lock().1.keys().collect::<Vec<_>>())
}

async fn create(req: Request, notes: Notes) -> (u16, Value) {
    let mut notes = notes.lock();
    notes.0 += 1;
    let id = notes.0;
    notes.1.insert(id, req.body_value());
    (201, json!({"id": id}))
}

async fn read(req: Request, notes: Notes) -> Result<Value, Error> {
    let id = id(&req)?;
    notes
        .lock()
        .1
        .get(&id)
        .cloned()
        .ok_or_else(|| Error::new(404, format!("no note {id}")))
}

async fn remove(req: Request, notes: Notes) -> Result<(u16, Value), Error> {
    let id = id(&req)?;
    match notes.lock().1.remove(&id) {
        Some(_) => Ok((204, Value::Null)),
        None => Err(Error::new(404, format!("no note {id}"))),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(host_key), Some(authorized_keys)) = (args.next(), args.next()) else {
        eprintln!("usage: state HOST_KEY AUTHORIZED_KEYS");
        std::process::exit(2);
    };
    KorvServer::with_state(Notes::default())
        .host_key_file(host_key)
        .authorized_keys_file(authorized_keys)
        .listen(([127, 0, 0, 1], korv_server::DEFAULT_PORT).into())
        .route("/notes", get(list).store(create))
        .route("/notes/{id}", get(read).delete(remove))
        .serve()
        .await?;
    Ok(())
}
