//! Integration tests of the lake: a real Iceberg table (SQLite catalog,
//! Parquet files on disk, or on moto's S3 server) written by real emitters.

mod common;
mod compaction;
mod concurrency;
mod emitter;
mod exactly_once;
mod faulty;
mod lifecycle;
mod parquet;
mod postgres;
mod s3;
