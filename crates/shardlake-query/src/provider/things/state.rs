//! The fold behind `things`: the latest event of every entity of one
//! namespace, kept up to date commit by commit.
//!
//! Folding is order-free: an entity keeps its first event (lowest
//! position: `created_at`), its latest (highest position: `version`,
//! `updated_at`, `payload`, whether it was a deletion) and a count, so the
//! events of new files can be added in any order and give exactly what the
//! `THINGS_SQL` aggregate gives over all of them.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Int64Type, SchemaRef, TimestampMicrosecondType};
use datafusion::error::{DataFusionError, Result as DfResult};
use object_store::path::Path;
use shardlake_core::schema::columns;

/// The event type that ends an entity's life in `things`.
pub(super) const DELETED: &str = "thing.deleted";

/// The columns a fold reads, in this order (indices into the `events` schema
/// are looked up by name).
pub(super) const FOLD_COLUMNS: [&str; 8] = [
    columns::NAMESPACE,
    columns::ENTITY_TYPE,
    columns::ENTITY_ID,
    columns::EVENT_TYPE,
    columns::VERSION,
    columns::TS,
    columns::PAYLOAD,
    columns::POSITION,
];

/// One entity's fold.
#[derive(Debug, Clone)]
struct Thing {
    /// Position and time of its first event.
    first_position: i64,
    created_at: i64,
    /// Position of its latest event, and what that event says.
    position: i64,
    version: Option<i64>,
    updated_at: i64,
    payload: Option<Box<str>>,
    deleted: bool,
    /// Events folded.
    events: i64,
}

/// Bytes an entity costs besides its key and payload: the map's slot and
/// the fixed fields (an estimate for the memory budget, not an allocator
/// measurement).
const ENTITY_OVERHEAD: usize = 96;

/// The fold of a set of files of one namespace.
#[derive(Debug, Default)]
pub(super) struct Fold {
    /// Entity type and id (the type's length first, so no separator can
    /// be confused with the strings) to its fold.
    entities: HashMap<Box<[u8]>, Thing>,
    /// The files folded with their rows, `None` while a fold is under way
    /// or after one was interrupted (then the fold is unusable and is
    /// rebuilt).
    files: Option<HashMap<Path, u64>>,
    /// Rows of those files, and the highest position in them.
    pub(super) rows: u64,
    pub(super) max_position: i64,
    /// Estimated bytes the entities hold, and the materialized batches.
    entity_bytes: usize,
    batch_bytes: usize,
    /// The live entities as record batches in the `things` schema, made
    /// once per set of files.
    batches: Option<Arc<Vec<RecordBatch>>>,
}

impl Fold {
    /// The files folded, if the fold is complete.
    pub(super) fn files(&self) -> Option<&HashMap<Path, u64>> {
        self.files.as_ref()
    }

    /// Starts adding files: until [`Self::finish`] the fold is marked
    /// incomplete, so a fold interrupted halfway (a cancelled query) is
    /// never used.
    pub(super) fn begin(&mut self) {
        self.batches = None;
        self.batch_bytes = 0;
        self.files = None;
    }

    /// Ends adding files (or relabels the fold after a compaction): the
    /// fold is now of `files`.
    pub(super) fn finish(&mut self, files: HashMap<Path, u64>) {
        self.files = Some(files);
    }

    /// Estimated bytes held: entities and materialized batches.
    pub(super) fn bytes(&self) -> usize {
        self.entity_bytes + self.batch_bytes
    }

    /// Forgets everything (before a rebuild).
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Folds one batch of events (columns as [`FOLD_COLUMNS`]) of
    /// `namespace`; rows of another namespace (a file that lied about its
    /// partition) and rows without an entity are not part of it.
    pub(super) fn add(&mut self, batch: &RecordBatch, namespace: &str) -> DfResult<()> {
        let string = |i: usize| {
            batch.column(i).as_string_opt::<i32>().ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "things fold: column {} is {}, not Utf8",
                    FOLD_COLUMNS[i],
                    batch.column(i).data_type()
                ))
            })
        };
        let (ns, entity_type, entity_id, event_type, payload) =
            (string(0)?, string(1)?, string(2)?, string(3)?, string(6)?);
        let version = batch.column(4).as_primitive::<Int64Type>();
        let ts = batch.column(5).as_primitive::<TimestampMicrosecondType>();
        let position = batch.column(7).as_primitive::<Int64Type>();
        let mut key = Vec::with_capacity(64);
        for row in 0..batch.num_rows() {
            self.rows += 1;
            if position.is_valid(row) {
                self.max_position = self.max_position.max(position.value(row));
            }
            if ns.is_null(row)
                || ns.value(row) != namespace
                || entity_type.is_null(row)
                || entity_id.is_null(row)
            {
                continue;
            }
            let (t, id) = (entity_type.value(row), entity_id.value(row));
            key.clear();
            key.extend_from_slice(&(t.len() as u32).to_le_bytes());
            key.extend_from_slice(t.as_bytes());
            key.extend_from_slice(id.as_bytes());
            let pos = position.value(row);
            let at = ts.value(row);
            let latest = || Thing {
                first_position: pos,
                created_at: at,
                position: pos,
                version: version.is_valid(row).then(|| version.value(row)),
                updated_at: at,
                payload: payload.is_valid(row).then(|| payload.value(row).into()),
                deleted: event_type.value(row) == DELETED,
                events: 1,
            };
            match self.entities.get_mut(key.as_slice()) {
                None => {
                    let thing = latest();
                    self.entity_bytes +=
                        key.len() + ENTITY_OVERHEAD + thing.payload.as_ref().map_or(0, |p| p.len());
                    self.entities.insert(key.as_slice().into(), thing);
                }
                Some(thing) => {
                    thing.events += 1;
                    if pos < thing.first_position {
                        thing.first_position = pos;
                        thing.created_at = at;
                    }
                    if pos > thing.position {
                        let old = thing.payload.as_ref().map_or(0, |p| p.len());
                        let Thing {
                            position,
                            version,
                            updated_at,
                            payload,
                            deleted,
                            ..
                        } = latest();
                        let new = payload.as_ref().map_or(0, |p| p.len());
                        (thing.position, thing.version, thing.updated_at) =
                            (position, version, updated_at);
                        (thing.payload, thing.deleted) = (payload, deleted);
                        self.entity_bytes = (self.entity_bytes + new).saturating_sub(old);
                    }
                }
            }
        }
        Ok(())
    }

    /// The live entities (latest event not a deletion) as batches of at
    /// most `batch_rows` rows in `schema` (the `things` view's), made once
    /// per set of files folded.
    pub(super) fn batches(
        &mut self,
        namespace: &str,
        schema: &SchemaRef,
        batch_rows: usize,
    ) -> DfResult<Arc<Vec<RecordBatch>>> {
        if let Some(batches) = &self.batches {
            return Ok(Arc::clone(batches));
        }
        let live: Vec<(&[u8], &Thing)> = self
            .entities
            .iter()
            .filter(|(_, t)| !t.deleted)
            .map(|(k, t)| (k.as_ref(), t))
            .collect();
        let mut batches = Vec::with_capacity(live.len().div_ceil(batch_rows.max(1)));
        for chunk in live.chunks(batch_rows.max(1)) {
            batches.push(to_batch(chunk, namespace, schema)?);
        }
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(Arc::clone(schema)));
        }
        self.batch_bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let batches = Arc::new(batches);
        self.batches = Some(Arc::clone(&batches));
        Ok(batches)
    }
}

/// `things` rows of `entities` (columns by name, as `THINGS_SQL` has them).
fn to_batch(
    entities: &[(&[u8], &Thing)],
    namespace: &str,
    schema: &SchemaRef,
) -> DfResult<RecordBatch> {
    let split = |key: &[u8]| -> (String, String) {
        let len = u32::from_le_bytes(key[..4].try_into().unwrap_or_default()) as usize;
        let (t, id) = key[4..].split_at(len.min(key.len() - 4));
        (
            String::from_utf8_lossy(t).into_owned(),
            String::from_utf8_lossy(id).into_owned(),
        )
    };
    let mut ids = StringBuilder::with_capacity(entities.len(), entities.len() * 16);
    let mut types = StringBuilder::with_capacity(entities.len(), entities.len() * 8);
    let mut payloads = StringBuilder::new();
    for (key, thing) in entities {
        let (t, id) = split(key);
        types.append_value(t);
        ids.append_value(id);
        payloads.append_option(thing.payload.as_deref());
    }
    let int64 = |f: fn(&Thing) -> Option<i64>| -> ArrayRef {
        Arc::new(entities.iter().map(|(_, t)| f(t)).collect::<Int64Array>())
    };
    let time = |f: fn(&Thing) -> i64| -> ArrayRef {
        Arc::new(
            entities
                .iter()
                .map(|(_, t)| Some(f(t)))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone(shardlake_core::schema::TS_TIMEZONE),
        )
    };
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| {
            let column: ArrayRef = match field.name().as_str() {
                "id" => Arc::new(ids.finish_cloned()),
                "type" => Arc::new(types.finish_cloned()),
                "version" => int64(|t| t.version),
                "created_at" => time(|t| t.created_at),
                "updated_at" => time(|t| t.updated_at),
                "namespace" => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    namespace,
                    entities.len(),
                ))),
                "payload" => Arc::new(payloads.finish_cloned()),
                "events" => int64(|t| Some(t.events)),
                "position" => int64(|t| Some(t.position)),
                other => {
                    return Err(DataFusionError::Internal(format!(
                        "things state has no column {other}"
                    )));
                }
            };
            Ok(column)
        })
        .collect::<DfResult<_>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}
