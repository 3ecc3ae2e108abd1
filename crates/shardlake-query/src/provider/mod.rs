//! The tables of shardlake's SQL: `events` (the log) and `things` (current
//! state per entity).

mod events;
mod pruning;

pub use events::EventsTable;

/// The `things` view: the latest state of every entity (by commit position),
/// entities whose latest event is `thing.deleted` excluded. Columns follow
/// the Thing of the typed API: `id`, `type`, `version`, `created_at`, `updated_at`,
/// `namespace`, `payload`, plus `events` and `position` (of the latest event).
///
/// An aggregate rather than a window: `first_value`/`last_value` keep their
/// ordering key per group, so no sort is needed, and filters on the group
/// keys (`namespace`, `type`, `id`) are pushed below the aggregate into the
/// `events` scan, where they prune partitions and files. Only primitive
/// values are carried through ordered aggregates (DataFusion has a fast
/// per-group accumulator for those); deletion is detected by comparing
/// positions, not by carrying the last `event_type` string. `payload` is the
/// one string carried, and the optimizer drops it when a query does not
/// select it.
pub const THINGS_SQL: &str = r#"
SELECT
    entity_id AS id,
    entity_type AS "type",
    last_value(version ORDER BY position) AS version,
    first_value(ts ORDER BY position) AS created_at,
    last_value(ts ORDER BY position) AS updated_at,
    namespace,
    last_value(payload ORDER BY position) AS payload,
    count(*) AS events,
    max(position) AS position
FROM events
WHERE entity_type IS NOT NULL AND entity_id IS NOT NULL
GROUP BY namespace, entity_type, entity_id
HAVING max(CASE WHEN event_type = 'thing.deleted' THEN position END) IS DISTINCT FROM max(position)
"#;
