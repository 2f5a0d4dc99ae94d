//! `korv demo`: throwaway keys, a server on 127.0.0.1 port 0 with a temporary
//! store, and the real client over real SSH, printing a whole session.

use std::process::ExitCode;

use anyhow::Context;
use korv_client::{ClientConfig, KorvClient, Response};
use korv_proto::Verb;
use russh::keys::HashAlg;
use serde_json::{Value, json};

pub(crate) async fn run() -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("cannot make a temporary folder")?;
    let host_key = crate::keys::new_ed25519("korv demo host")?;
    let client_key = crate::keys::new_ed25519("korv demo client")?;
    let identity = dir.path().join("id_ed25519");
    crate::keys::write_private_key(&client_key, &identity)?;
    let store = crate::store::Store::open(&dir.path().join("store.redb"))?;
    let host_public = host_key.public_key().clone();
    let bound = crate::serve::app(store, &crate::serve::host_name())
        .host_key(host_key)
        .authorized_key(client_key.public_key().clone(), "korv demo client")
        .listen(([127, 0, 0, 1], 0).into())
        .bind()
        .await?;
    let addr = bound.local_addr();
    let shutdown = bound.shutdown_handle();
    let server = tokio::spawn(bound.run());
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{} {}\n",
            addr.port(),
            host_public.to_openssh()?
        ),
    )?;
    println!(
        "korv demo: server on {addr}, host key {}",
        host_public.fingerprint(HashAlg::Sha256)
    );
    println!(
        "korv demo: client key {}\n",
        client_key.public_key().fingerprint(HashAlg::Sha256)
    );
    let client = KorvClient::connect(
        ClientConfig::new("127.0.0.1")
            .port(addr.port())
            .user("demo")
            .identity_file(&identity)
            .use_agent(false)
            .known_hosts(&known_hosts),
    )
    .await?;

    let steps: [(Verb, &str, Option<Value>, u16); 9] = [
        (Verb::Get, "/hello", None, 200),
        (Verb::Store, "/echo", Some(json!({"text": "anything"})), 200),
        (
            Verb::Store,
            "/notes/1",
            Some(json!({"text": "first draft"})),
            201,
        ),
        (Verb::Get, "/notes/1", None, 200),
        (
            Verb::Update,
            "/notes/1",
            Some(json!({"text": "final"})),
            200,
        ),
        (Verb::Get, "/notes/", None, 200),
        (Verb::Delete, "/notes/1", None, 200),
        (Verb::Get, "/notes/1", None, 404),
        (Verb::Get, "/boom", None, 500),
    ];
    let mut failures = 0u64;
    for (verb, resource, body, expected) in steps {
        match &body {
            Some(body) => println!("→ {verb} {resource} {body}"),
            None => println!("→ {verb} {resource}"),
        }
        let response: Response = client
            .request(verb, resource, body.as_ref(), Default::default())
            .await?;
        let ok = response.code.as_u16() == expected;
        failures += u64::from(!ok);
        println!(
            "← {}{}\n  {}\n",
            response.code,
            if ok {
                String::new()
            } else {
                format!("  (expected {expected})")
            },
            crate::output::render(&response.body, false, false)
        );
    }
    shutdown.shutdown();
    drop(client);
    let _ = server.await;
    if failures == 0 {
        println!("korv demo: every answer was as expected");
    } else {
        println!("korv demo: {failures} answer(s) differed from what was expected");
    }
    Ok(crate::error_reporting::for_failures(failures))
}
