//! The tables of shardlake's SQL: `events` (the log) and `things` (current
//! state per entity).

mod events;
mod pruning;
mod things;

pub use events::EventsTable;
pub use things::{THINGS_SQL, ThingsTable};
