//! The document store behind `korv serve`: JSON documents keyed by resource
//! path, in a redb database. Every change is committed durably (fsync)
//! before it is acknowledged.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

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
        Ok(Store { db: Arc::new(db) })
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
    }

    /// Removes `key`, returning the removed document.
    pub(crate) fn remove(&self, key: &str) -> anyhow::Result<Outcome> {
        self.change(|table| {
            let removed = table.remove(key)?.map(|v| v.value().to_owned());
            Ok(removed.map_or(Outcome::Missing, Outcome::Done))
        })
    }

    fn change(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &str, &str>) -> anyhow::Result<Outcome>,
    ) -> anyhow::Result<Outcome> {
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
        Ok(outcome)
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
