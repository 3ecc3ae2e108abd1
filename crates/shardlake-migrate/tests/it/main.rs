//! Migration plans from a real lake, the shard stubs (in memory and over
//! real HTTP), and phased migrations with their failures.

mod migrations;
mod plans;
mod stubs;
