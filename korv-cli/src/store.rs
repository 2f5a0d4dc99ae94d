//! The document store behind `korv serve`: JSON documents keyed by resource
//! path, in a redb database. Every change is committed durably (fsync)
//! before it is acknowledged.
//!
//! Watchers ([`Store::watch`]) are told of each change once it is
//! committed, in commit order: changes are committed one at a time, and
//! each is handed to the watchers before the next commits. Handing over
//! never waits: each watcher has a queue of its own, which its watch drains.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const DOCS: TableDefinition<'_, &str, &str> = TableDefinition::new("documents");

/// What a change found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done(String),
    Missing,
    Exists,
}

/// A cheap-to-clone handle to the store.
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
    /// Held from the start of a change to its hand-over to the watchers.
    commits: Arc<Mutex<()>>,
    watchers: Arc<Mutex<Vec<Watcher>>>,
}

/// One watch on the store: a document's path, or a prefix ending in `/`.
struct Watcher {
    path: String,
    events: mpsc::UnboundedSender<Value>,
}

impl Watcher {
    fn sees(&self, key: &str) -> bool {
        match self.path.ends_with('/') {
            true => key.starts_with(&self.path),
            false => key == self.path,
        }
    }
}

/// What kind of change a committed change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stored,
    Updated,
    Deleted,
}

impl Store {
    pub(crate) fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the data folder {}", parent.display()))?;
        }
        let db = Database::create(path)
            .with_context(|| format!("cannot open the store {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(DOCS)?;
        txn.commit()?;
        Ok(Store {
            db: Arc::new(db),
            commits: Arc::new(Mutex::new(())),
            watchers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The changes committed from now on to the document at `path`, or to
    /// every document under `path` when it ends in `/`, as events
    /// `{"event": "stored"|"updated"|"deleted", "resource", "document"}`
    /// (for `deleted`, the document as it was). Dropping the receiver ends
    /// the watch.
    pub(crate) fn watch(&self, path: &str) -> mpsc::UnboundedReceiver<Value> {
        let (events, receiver) = mpsc::unbounded_channel();
        if let Ok(mut watchers) = self.watchers.lock() {
            watchers.push(Watcher {
                path: path.to_owned(),
                events,
            });
        }
        receiver
    }

    /// Hands a committed change to the watchers that see it; forgets the
    /// watchers whose watch has ended.
    fn publish(&self, kind: Kind, key: &str, doc: &str) {
        let Ok(mut watchers) = self.watchers.lock() else {
            return;
        };
        if watchers.is_empty() {
            return;
        }
        let mut event = None;
        watchers.retain(|watcher| {
            if !watcher.sees(key) {
                return !watcher.events.is_closed();
            }
            let event = event.get_or_insert_with(|| {
                let event = match kind {
                    Kind::Stored => "stored",
                    Kind::Updated => "updated",
                    Kind::Deleted => "deleted",
                };
                let document = serde_json::from_str::<Value>(doc).unwrap_or(Value::Null);
                json!({"event": event, "resource": key, "document": document})
            });
            watcher.events.send(event.clone()).is_ok()
        });
    }

    pub(crate) fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DOCS)?;
        Ok(table.get(key)?.map(|v| v.value().to_owned()))
    }

    /// Paths under `prefix` (which ends in `/`), sorted.
    pub(crate) fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DOCS)?;
        let mut items = Vec::new();
        for entry in table.range(prefix..)? {
            let (key, _) = entry?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            items.push(key.to_owned());
        }
        Ok(items)
    }

    /// Creates `key`; `Exists` if it is there already.
    pub(crate) fn create(&self, key: &str, doc: &str) -> anyhow::Result<Outcome> {
        self.change(|table| {
            if table.get(key)?.is_some() {
                return Ok(Outcome::Exists);
            }
            table.insert(key, doc)?;
            Ok(Outcome::Done(doc.to_owned()))
        })
        .map(|outcome| self.published(outcome, Kind::Stored, key))
    }

    /// Replaces `key`; `Missing` if it is not there.
    pub(crate) fn replace(&self, key: &str, doc: &str) -> anyhow::Result<Outcome> {
        self.change(|table| {
            if table.get(key)?.is_none() {
                return Ok(Outcome::Missing);
            }
            table.insert(key, doc)?;
            Ok(Outcome::Done(doc.to_owned()))
        })
        .map(|outcome| self.published(outcome, Kind::Updated, key))
    }

    /// Removes `key`, returning the removed document.
    pub(crate) fn remove(&self, key: &str) -> anyhow::Result<Outcome> {
        self.change(|table| {
            let removed = table.remove(key)?.map(|v| v.value().to_owned());
            Ok(removed.map_or(Outcome::Missing, Outcome::Done))
        })
        .map(|outcome| self.published(outcome, Kind::Deleted, key))
    }

    /// `outcome`, once the change it reports is handed to the watchers.
    fn published(
        &self,
        outcome: (Outcome, Option<std::sync::MutexGuard<'_, ()>>),
        kind: Kind,
        key: &str,
    ) -> Outcome {
        let (outcome, _commit_order) = outcome;
        if let Outcome::Done(doc) = &outcome {
            self.publish(kind, key, doc);
        }
        outcome
    }

    /// Runs `f` in a write transaction, committed when it reports `Done`;
    /// returns with the commit order held, so that the change reaches the
    /// watchers before the next one commits.
    fn change(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &str, &str>) -> anyhow::Result<Outcome>,
    ) -> anyhow::Result<(Outcome, Option<std::sync::MutexGuard<'_, ()>>)> {
        let order = self.commits.lock().ok();
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut table = txn.open_table(DOCS)?;
            f(&mut table)?
        };
        if matches!(outcome, Outcome::Done(_)) {
            txn.commit()?; // durable: redb's default durability fsyncs here
        } else {
            txn.abort()?;
        }
        Ok((outcome, order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_live_through_a_reopen_and_list_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(
                store.create("/n/b", "2").unwrap(),
                Outcome::Done("2".into())
            );
            assert_eq!(
                store.create("/n/a", "1").unwrap(),
                Outcome::Done("1".into())
            );
            assert_eq!(store.create("/n/a", "9").unwrap(), Outcome::Exists);
            assert_eq!(store.create("/o", "3").unwrap(), Outcome::Done("3".into()));
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list("/n/").unwrap(), vec!["/n/a", "/n/b"]);
        assert_eq!(store.replace("/x", "1").unwrap(), Outcome::Missing);
        assert_eq!(store.remove("/n/a").unwrap(), Outcome::Done("1".into()));
        assert_eq!(store.get("/n/a").unwrap(), None);
    }
}
