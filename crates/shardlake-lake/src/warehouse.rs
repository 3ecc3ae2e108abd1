//! Where a lake lives: the object store holding table files, the URL of its
//! root, the catalog database (a SQLite file in the local data directory by
//! default, or a PostgreSQL database several servers share) and the local
//! directory holding dead letters.
//!
//! One [`Warehouse`] hands the *same* object store to the Iceberg file IO
//! (through [`crate::storage::ObjectStoreStorage`], configured by
//! [`ObjectStorageConfig`]) and to DataFusion, so
//! writes and reads go through one client and one configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use url::Url;

use crate::error::{Error, ErrorKind, Result};
use crate::format::TableFormat;
use crate::storage::ObjectStorageConfig;

/// File name of the SQLite catalog inside the data directory.
pub const CATALOG_FILE: &str = "catalog.db";
/// Directory of table files inside the data directory.
pub const WAREHOUSE_DIR: &str = "warehouse";
/// Directory of dead-letter records inside the data directory.
pub const DEAD_LETTER_DIR: &str = "dead-letter";

/// A lake's storage: the object store, the root URL of table files in it, and
/// the local data directory (catalog database, dead letters).
#[derive(Debug, Clone)]
pub struct Warehouse {
    data_dir: PathBuf,
    root: Url,
    store: Arc<dyn ObjectStore>,
    // `None`: the SQLite file `<data_dir>/catalog.db`.
    catalog_url: Option<String>,
}

impl Warehouse {
    /// The embedded default: everything under one local directory
    /// (`<dir>/catalog.db`, `<dir>/warehouse/`), created if missing.
    pub fn local(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open(dir, &ObjectStorageConfig::default())
    }

    /// The catalog database and dead letters in the local `data_dir`, table
    /// files where `storage` says (by default `<data_dir>/warehouse/`).
    pub fn open(data_dir: impl AsRef<Path>, storage: &ObjectStorageConfig) -> Result<Self> {
        let data_dir = ensure_dir(data_dir.as_ref(), "data")?;
        let opened = storage.open(&data_dir.join(WAREHOUSE_DIR))?;
        Ok(Self {
            data_dir,
            root: opened.root,
            store: opened.store,
            catalog_url: None,
        })
    }

    /// A warehouse whose table files live in `store` under `root` (a
    /// directory URL inside the store), with catalog and dead letters in the
    /// local `data_dir`. This is how tests inject a store that fails on cue,
    /// and how object storage plugs in.
    pub fn with_store(
        data_dir: impl AsRef<Path>,
        root: Url,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Self> {
        let data_dir = ensure_dir(data_dir.as_ref(), "data")?;
        let mut root = root;
        if !root.path().ends_with('/') {
            let path = format!("{}/", root.path());
            root.set_path(&path);
        }
        Ok(Self {
            data_dir,
            root,
            store,
            catalog_url: None,
        })
    }

    /// Keeps the catalog (and the control state next to it) in the database
    /// at `url` (`postgres://...`, or a `sqlite://` file elsewhere) instead
    /// of `<data_dir>/catalog.db`; `None` keeps the default.
    pub fn with_catalog_url(mut self, url: Option<String>) -> Self {
        self.catalog_url = url;
        self
    }

    /// Whether the catalog is a database named by URL rather than the
    /// default file in the data directory.
    pub fn has_catalog_url(&self) -> bool {
        self.catalog_url.is_some()
    }

    /// Where the catalog is, for messages: its URL without password, or
    /// the data directory holding `catalog.db`.
    pub fn catalog_shown(&self) -> String {
        match &self.catalog_url {
            Some(url) => format!("the catalog at {}", crate::db::redact(url)),
            None => format!("the catalog in {}", self.data_dir.display()),
        }
    }

    /// The local directory holding the catalog database and dead letters.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// URL of the root of table files, ending in `/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The root URL as Iceberg spells warehouse locations (no trailing `/`).
    pub fn root_location(&self) -> String {
        self.root.as_str().trim_end_matches('/').to_owned()
    }

    /// The object store holding table files.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The URL (scheme and authority) under which DataFusion must register
    /// [`Self::store`], e.g. `file:///` or `s3://bucket/`.
    pub fn store_url(&self) -> Url {
        let mut url = self.root.clone();
        url.set_path("/");
        url
    }

    /// URL of the catalog database: the one given, else the `sqlite://`
    /// file in the data directory (created if missing).
    pub fn catalog_uri(&self) -> String {
        match &self.catalog_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(CATALOG_FILE).display()
            ),
        }
    }

    /// Turns a location (URL within this warehouse's store, or an absolute
    /// local path) into a path inside [`Self::store`].
    pub fn object_path(&self, location: &str) -> Result<object_store::path::Path> {
        to_object_path(&self.store_url(), location)
    }
}

/// What a local data directory holds, as far as lakes go. Read-only
/// commands ask before opening, so that a mistyped path is an error rather
/// than a new, empty lake answering every question with zero rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeDir {
    /// The data directory of a lake in this format (`catalog.db`: Iceberg;
    /// `control.db`: plain Parquet).
    Lake(TableFormat),
    /// Not a lake itself but inside the data directory `root` of one (its
    /// `warehouse/` table files, say): a natural mistake worth naming.
    Inside {
        /// The lake's data directory.
        root: PathBuf,
        /// Its format.
        format: TableFormat,
    },
    /// No lake here (the directory may not even exist).
    Empty,
}

impl LakeDir {
    /// Looks at `dir` and, unless it is a lake, at its ancestors. Creates
    /// nothing.
    pub fn probe(dir: &Path) -> Self {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        if let Some(format) = format_of(&dir) {
            return Self::Lake(format);
        }
        dir.ancestors()
            .skip(1)
            .find_map(|a| {
                format_of(a).map(|format| Self::Inside {
                    root: a.to_path_buf(),
                    format,
                })
            })
            .unwrap_or(Self::Empty)
    }
}

/// The format of the lake whose data directory is `dir`, if it is one.
fn format_of(dir: &Path) -> Option<TableFormat> {
    if dir.join(CATALOG_FILE).is_file() {
        Some(TableFormat::Iceberg)
    } else if dir.join(crate::parquet::CONTROL_DB).is_file() {
        Some(TableFormat::Parquet)
    } else {
        None
    }
}

/// Creates `dir` if missing and returns its absolute path; `what` names
/// it in errors ("data", "warehouse").
pub(crate) fn ensure_dir(dir: &Path, what: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::new(
            ErrorKind::DataInvalid,
            format!("cannot create {what} directory {}", dir.display()),
        )
        .with_source(e)
    })?;
    dir.canonicalize().map_err(|e| {
        Error::new(
            ErrorKind::DataInvalid,
            format!("cannot resolve {what} directory {}", dir.display()),
        )
        .with_source(e)
    })
}

/// Maps `location` to a path inside the store registered at `store_url`.
pub(crate) fn to_object_path(store_url: &Url, location: &str) -> Result<object_store::path::Path> {
    let url = if location.starts_with('/') {
        Url::from_file_path(location).map_err(|()| {
            Error::new(ErrorKind::DataInvalid, format!("bad local path {location}"))
        })?
    } else {
        Url::parse(location).map_err(|e| {
            Error::new(ErrorKind::DataInvalid, format!("bad location {location}")).with_source(e)
        })?
    };
    if url.scheme() != store_url.scheme() || url.host_str() != store_url.host_str() {
        return Err(Error::new(
            ErrorKind::DataInvalid,
            format!("location {location} is outside the warehouse store {store_url}"),
        ));
    }
    object_store::path::Path::from_url_path(url.path()).map_err(|e| {
        Error::new(ErrorKind::DataInvalid, format!("bad location {location}")).with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_layout_and_paths() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let w = Warehouse::local(tmp.path().join("lake")).expect("warehouse");
        assert!(w.data_dir().join(WAREHOUSE_DIR).is_dir());
        assert!(w.root().as_str().starts_with("file:///"));
        assert!(w.root().as_str().ends_with("/warehouse/"));
        assert_eq!(w.store_url().as_str(), "file:///");
        let loc = format!("{}events/data/x.parquet", w.root());
        let p = w.object_path(&loc).expect("inside");
        assert!(
            p.as_ref().ends_with("warehouse/events/data/x.parquet"),
            "{p}"
        );
        assert!(w.object_path("s3://bucket/key").is_err());
        assert!(w.catalog_uri().starts_with("sqlite://"));
        assert!(!w.has_catalog_url());
        let pg = w.with_catalog_url(Some("postgres://lake:pw@db/lake".to_owned()));
        assert_eq!(pg.catalog_uri(), "postgres://lake:pw@db/lake");
        assert_eq!(
            pg.catalog_shown(),
            "the catalog at postgres://lake:***@db/lake"
        );
    }
}
