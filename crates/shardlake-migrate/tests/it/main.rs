//! Migration plans from a real lake, and phased migrations with their
//! failures (the shard protocol's own tests are `shardlake-shard`'s).

mod migrations;
mod plans;
