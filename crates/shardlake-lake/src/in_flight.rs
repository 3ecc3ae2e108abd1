//! What this process is writing right now, so that cleanup in the same
//! process never takes it for a leftover.
//!
//! Both formats register the files (Iceberg: manifests, manifest lists and
//! metadata files, by name) or commits (Parquet: by commit id) they are
//! writing before the first byte goes out, and forget them once the commit
//! landed or was given up. Asking "is it being written?" at one instant is
//! not enough for cleanup, though: cleanup reads the table, then lists the
//! files, then decides, and a commit that was in flight when the table was
//! read may land and be forgotten before the decision. Its files are then
//! neither in the table cleanup read nor in flight, and would be deleted
//! though the current snapshot references them (the CI run of
//! `maintenance_with_no_grace_beside_a_busy_emitter_keeps_every_live_file`
//! caught exactly that). So cleanup [`InFlight::watch`]es before it reads
//! the table: whatever was in flight at any moment while the watch lives
//! counts as in flight for it.
//!
//! This covers the writers of this process only. Files of other processes
//! are protected by the grace period, which is why it defaults to an hour.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// The registry; clones share it.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    writing: HashSet<String>,
    /// Watches alive; while there are any, what is forgotten is kept in
    /// `finished` for them.
    watchers: usize,
    finished: HashSet<String>,
}

impl InFlight {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `key` (before writing anything for it).
    pub(crate) fn add(&self, key: &str) {
        self.state().writing.insert(key.to_owned());
    }

    /// Forgets `key` (its commit landed or was given up).
    pub(crate) fn remove(&self, key: &str) {
        let mut state = self.state();
        if state.writing.remove(key) && state.watchers > 0 {
            state.finished.insert(key.to_owned());
        }
    }

    /// Registers `key` until the guard drops.
    pub(crate) fn hold(&self, key: &str) -> Held {
        self.add(key);
        Held {
            registry: self.clone(),
            key: key.to_owned(),
        }
    }

    /// Starts remembering: the watch answers for everything in flight at
    /// any moment from now until it drops.
    pub(crate) fn watch(&self) -> Watch {
        self.state().watchers += 1;
        Watch {
            registry: self.clone(),
        }
    }
}

/// A key registered while it lives (see [`InFlight::hold`]).
#[derive(Debug)]
pub(crate) struct Held {
    registry: InFlight,
    key: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.registry.remove(&self.key);
    }
}

/// See [`InFlight::watch`].
#[derive(Debug)]
pub(crate) struct Watch {
    registry: InFlight,
}

impl Watch {
    /// Whether `key` was in flight at any moment since the watch started
    /// (or is now).
    pub(crate) fn saw(&self, key: &str) -> bool {
        let state = self.registry.state();
        state.writing.contains(key) || state.finished.contains(key)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = self.registry.state();
        state.watchers -= 1;
        if state.watchers == 0 {
            state.finished.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_remembers_what_finished_while_it_lived() {
        let registry = InFlight::default();
        registry.add("landed-before");
        registry.remove("landed-before");
        registry.add("a");
        let watch = registry.watch();
        assert!(watch.saw("a"));
        // Lands after the watch started: still counts.
        registry.remove("a");
        assert!(watch.saw("a"));
        // Started and landed within the watch: counts too.
        drop(registry.hold("b"));
        assert!(watch.saw("b"));
        // Forgotten before the watch started: a leftover like any other.
        assert!(!watch.saw("landed-before"));
        drop(watch);
        // Nothing is remembered once no one watches.
        let later = registry.watch();
        assert!(!later.saw("a") && !later.saw("b"));
    }

    #[test]
    fn overlapping_watches_keep_what_the_longer_one_needs() {
        let registry = InFlight::default();
        let long = registry.watch();
        let short = registry.watch();
        drop(registry.hold("c"));
        drop(short);
        assert!(long.saw("c"));
    }
}
