//! shardlake's own physical optimizer rules, placed among DataFusion's by
//! the engine ([`crate::engine`]): each uses what DataFusion cannot know
//! about the lake's files.
//!
//! - [`AnswerFromStatistics`]: grouped aggregates answered from the files'
//!   statistics (every file holds one namespace), no data read.
//! - [`ReadInFileOrder`]: a scan whose rows are wanted in
//!   `(partition_key, position)` order reads its files in chains that are
//!   already in that order, so a merge replaces the sort.

mod file_order;
mod statistics;

pub use file_order::ReadInFileOrder;
pub use statistics::AnswerFromStatistics;
