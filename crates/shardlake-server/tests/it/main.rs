//! Integration tests of the HTTP server: a real server on 127.0.0.1:0,
//! a real lake in a temporary directory, real HTTP through reqwest.

mod auth;
mod console;
mod ingest;
mod lifecycle;
mod migrations;
mod ops;
mod postgres;
mod postgres_clients_corpus;
mod postgres_slt;
mod query;
mod serving;
mod support;
