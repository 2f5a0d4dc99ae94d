//! A configuration file that is parsed once and parsed again whenever it
//! changes on disk: authorized_keys, trusted CA keys, revoked keys.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::warn;

/// What identifies one version of a file: its modification time and length.
/// A file rewritten within the same clock tick usually changes length too.
type Stamp = (Option<SystemTime>, u64);

/// The parsed contents of a file, or why it could not be read.
pub(crate) type Loaded<T> = Arc<Result<T, String>>;

/// A file parsed by `parse`, re-read when its modification time or length
/// changes. A missing or unreadable file is retried on every use.
pub(crate) struct ReloadingFile<T> {
    path: PathBuf,
    /// Names the file in log lines ("authorized_keys", "revoked keys", ...).
    what: &'static str,
    parse: fn(&str, &Path) -> T,
    state: Mutex<Option<(Stamp, Loaded<T>)>>,
}

impl<T> std::fmt::Debug for ReloadingFile<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingFile")
            .field("path", &self.path)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl<T> ReloadingFile<T> {
    /// Reads the file now, so that a bad path is logged at startup.
    pub(crate) fn new(path: PathBuf, what: &'static str, parse: fn(&str, &Path) -> T) -> Self {
        let this = ReloadingFile {
            path,
            what,
            parse,
            state: Mutex::new(None),
        };
        drop(this.current());
        this
    }

    /// The current contents, re-read if the file changed since the last call.
    pub(crate) fn current(&self) -> Loaded<T> {
        let metadata = std::fs::metadata(&self.path).ok();
        let stamp: Stamp = (
            metadata.as_ref().and_then(|m| m.modified().ok()),
            metadata.as_ref().map_or(0, |m| m.len()),
        );
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((seen, loaded)) = state.as_ref()
            && seen.0.is_some()
            && *seen == stamp
            && loaded.is_ok()
        {
            return Arc::clone(loaded);
        }
        let loaded = match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok((self.parse)(&text, &self.path)),
            Err(err) => {
                let reason = format!("cannot read {} {}: {err}", self.what, self.path.display());
                // Log once per failure, not on every connection.
                if state.as_ref().is_none_or(|(_, loaded)| loaded.is_ok()) {
                    warn!(file = %self.path.display(), %err, "cannot read {}", self.what);
                }
                Err(reason)
            }
        };
        let loaded = Arc::new(loaded);
        *state = Some((stamp, Arc::clone(&loaded)));
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str, _: &Path) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        std::fs::write(&path, "a\n").unwrap();
        let file = ReloadingFile::new(path.clone(), "list", lines);
        assert_eq!(*file.current(), Ok(vec!["a".to_owned()]));
        std::fs::write(&path, "a\nb\n").unwrap();
        assert_eq!(*file.current(), Ok(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn a_missing_file_is_an_error_until_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list");
        let file = ReloadingFile::new(path.clone(), "list", lines);
        let err = file.current().as_ref().clone().unwrap_err();
        assert!(err.contains("cannot read list"), "{err}");
        std::fs::write(&path, "x\n").unwrap();
        assert_eq!(*file.current(), Ok(vec!["x".to_owned()]));
    }
}
