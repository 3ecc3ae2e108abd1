//! Migration plans from a real lake, and the shard stubs (in memory and
//! over real HTTP).

mod plans;
mod stubs;
