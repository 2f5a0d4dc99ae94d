//! Typed bodies and typed errors: requests deserialized into structs with
//! serde, answers serialized from structs, and an error enum whose every
//! variant knows its status code.
//!
//! ```sh
//! ssh-keygen -t ed25519 -N '' -f /tmp/korv_host_key
//! cargo run -p korv-server --example typed -- /tmp/korv_host_key ~/.ssh/authorized_keys
//! ```
//!
//! then, in another terminal (`korv` is `cargo run -p korv-cli --`):
//!
//! ```sh
//! korv store korv://localhost:8022/users '{"name":"ada","age":36}' --accept-new  # 201
//! korv store korv://localhost:8022/users '{"name":"ada","age":36}'  # 409 the name is taken
//! korv store korv://localhost:8022/users '{"name":"bob","age":-1}'  # 400 at `age`: ...
//! korv get korv://localhost:8022/users/7                            # 404 no user 7
//! ```

use std::sync::{Arc, Mutex};

use korv_server::routing::{get, store};
use korv_server::{BodyError, Error, KorvServer, Request};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The body of `STORE /users`.
#[derive(Deserialize)]
struct NewUser {
    name: String,
    age: u8,
}

/// A user as stored and answered.
#[derive(Clone, Serialize)]
struct User {
    id: usize,
    name: String,
    age: u8,
}

/// What can go wrong in this app.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("no user {0}")]
    NoSuchUser(String),
    #[error("the name {0:?} is taken")]
    NameTaken(String),
    #[error(transparent)]
    BadBody(#[from] BodyError),
}

/// Each variant's status code. Handlers return `Result<_, korv_server::Error>`,
/// so `?` turns an `AppError` into its answer: the code and
/// `{"message": ...}`.
impl From<AppError> for Error {
    fn from(err: AppError) -> Error {
        let code = match err {
            AppError::NoSuchUser(_) => 404,
            AppError::NameTaken(_) => 409,
            AppError::BadBody(_) => 400,
        };
        Error::new(code, err.to_string())
    }
}

type Users = Arc<Mutex<Vec<User>>>;

fn lock(users: &Users) -> std::sync::MutexGuard<'_, Vec<User>> {
    users
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn create(req: Request, users: Users) -> Result<(u16, Value), Error> {
    let new: NewUser = req.body().map_err(AppError::from)?;
    let mut users = lock(&users);
    if users.iter().any(|user| user.name == new.name) {
        return Err(AppError::NameTaken(new.name).into());
    }
    let user = User {
        id: users.len() + 1,
        name: new.name,
        age: new.age,
    };
    users.push(user.clone());
    Ok((201, json!(user)))
}

async fn read(req: Request, users: Users) -> Result<Value, Error> {
    let id = req.param("id").unwrap_or_default();
    let user = id
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|index| lock(&users).get(index).cloned())
        .ok_or_else(|| AppError::NoSuchUser(id.to_owned()))?;
    Ok(json!(user))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(host_key), Some(authorized_keys)) = (args.next(), args.next()) else {
        eprintln!("usage: typed HOST_KEY AUTHORIZED_KEYS");
        std::process::exit(2);
    };
    KorvServer::with_state(Users::default())
        .host_key_file(host_key)
        .authorized_keys_file(authorized_keys)
        .listen(([127, 0, 0, 1], korv_server::DEFAULT_PORT).into())
        .route("/users", store(create))
        .route("/users/{id}", get(read))
        .serve()
        .await?;
    Ok(())
}
