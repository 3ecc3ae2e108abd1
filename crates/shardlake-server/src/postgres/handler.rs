//! The query handlers: the simple protocol (`Query`: text in, rows out) and
//! the extended one (`Parse`, `Bind`, `Describe`, `Execute`: prepared
//! statements with `$n` parameters and portals fetched in pieces).
//!
//! Every query runs as an HTTP query does: the caller's scope inside the
//! engine, the same timeout, result limits, query slots and memory pool,
//! answers from the result cache when it holds one; otherwise the rows
//! stream from the engine as it produces them, so a large result never
//! sits in memory. A whole-result `Execute` (fetch size 0, what most
//! drivers send) streams too, instead of pgwire's default of collecting
//! the portal first; a fetch size above 0 (a server-side cursor) keeps the
//! portal suspended between fetches, holding its query slot.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion_common::ScalarValue;
use futures::stream::BoxStream;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_describe_response, send_execution_response,
    send_query_response,
};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, DEFAULT_NAME, PgWireConnectionState, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::extendedquery::{
    Describe, Execute, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{EmptyQueryResponse, TransactionStatus};
use shardlake_query::{Description, QueryResult, QueryStream, ResultLimit, SqlDialect};
use tokio_util::sync::CancellationToken;

use super::cursor::{self, Cursor, CursorStatement};
use super::session::{self, Command, Statement, statement_timeout_ms};
use super::types;
use super::{Session, errors};
use crate::error::ApiError;
use crate::metrics::ErrorLabels;
use crate::routes::query::record;
use crate::state::AppState;

/// A statement of the extended protocol, parsed and described.
#[derive(Debug, Clone)]
pub(super) enum PgStatement {
    /// Nothing to run.
    Empty,
    /// A session statement (`SET`, `BEGIN`, `SHOW` ...).
    Command(Command),
    /// A query, planned once at `Parse` to describe it.
    Query {
        sql: Arc<str>,
        description: Arc<Description>,
    },
    /// A cursor statement; a `DECLARE`'s query is described at `Parse`
    /// (its parameters).
    Cursor {
        statement: CursorStatement,
        description: Option<Arc<Description>>,
    },
}

/// A query's answer on its way: its columns, its batches as they come and
/// the token a cancel request fires.
pub(super) struct Rows {
    pub(super) schema: SchemaRef,
    pub(super) batches: BoxStream<'static, Result<RecordBatch, ApiError>>,
    pub(super) cancel: CancellationToken,
    /// The query's timeout.
    pub(super) timeout: Duration,
}

/// The query handlers of every connection (they keep no per-connection
/// state: that is in the connection's [`Session`]).
pub(super) struct Queries {
    state: AppState,
    parser: Arc<Parser>,
}

impl Queries {
    pub(super) fn new(state: AppState) -> Self {
        Self {
            parser: Arc::new(Parser {
                state: state.clone(),
            }),
            state,
        }
    }

    /// Runs `sql` for the connection's caller: the rows, described in
    /// `format`, as a stream the protocol sends as it comes.
    async fn run(
        &self,
        session: &Session,
        sql: &str,
        parameters: Vec<ScalarValue>,
        format: &Format,
        statement_timeout: Option<Duration>,
    ) -> PgWireResult<QueryResponse> {
        let rows = self
            .start(session, sql, parameters, statement_timeout)
            .await?;
        let fields = Arc::new(types::fields(&rows.schema, format)?);
        Ok(QueryResponse::new(
            Arc::clone(&fields),
            types::rows(fields, rows.batches, rows.cancel),
        ))
    }

    /// Starts `sql` for the connection's caller, as an HTTP query starts:
    /// the answer from the cache, or the engine's stream of batches.
    async fn start(
        &self,
        session: &Session,
        sql: &str,
        parameters: Vec<ScalarValue>,
        statement_timeout: Option<Duration>,
    ) -> PgWireResult<Rows> {
        let metrics = self.state.metrics();
        metrics.pg_queries.inc();
        let cancel = session.cancel.query.start();
        let limits = &self.state.config().limits;
        let longest = limits.query_timeout();
        let timeout = statement_timeout.map_or(longest, |t| t.min(longest));
        let mut query = self
            .state
            .engine()
            .sql(sql)
            .in_dialect(SqlDialect::Postgres)
            .with_scope(session.caller.scope.clone())
            .with_timeout(timeout)
            .with_result_limit(ResultLimit {
                max_rows: limits.max_rows as u64,
                max_bytes: limits.max_response_bytes as u64,
            });
        if !parameters.is_empty() {
            query = query.with_parameters(parameters);
        }
        let state = self.state.clone();
        let started = async move {
            let prepared = query.prepare().await?;
            // A cache hit costs no query slot, as over HTTP.
            if let Some(hit) = prepared.cached().await? {
                return Ok::<_, ApiError>(Answer::Cached(Box::new(hit)));
            }
            let slot = state.query_slot().await?;
            Ok(Answer::Streaming(Box::new(
                prepared.holding(slot).stream().await?,
            )))
        };
        let answer = tokio::select! {
            answer = started => answer.map_err(|e| failed(&self.state, &e))?,
            () = cancel.cancelled() => return Err(errors::cancelled()),
        };
        let (schema, batches): (SchemaRef, BoxStream<'static, Result<RecordBatch, ApiError>>) =
            match answer {
                Answer::Cached(hit) => {
                    let hit = *hit;
                    record(&self.state, &hit.stats);
                    (
                        Arc::clone(&hit.schema),
                        futures::stream::iter(hit.batches.into_iter().map(Ok)).boxed(),
                    )
                }
                Answer::Streaming(stream) => (
                    stream.schema(),
                    Recorded {
                        stream: *stream,
                        state: self.state.clone(),
                        recorded: false,
                    }
                    .boxed(),
                ),
            };
        Ok(Rows {
            schema,
            batches,
            cancel,
            timeout,
        })
    }

    /// Answers a cursor statement. `format` is the result format a FETCH
    /// of the extended protocol asks for (`None`: the simple protocol's).
    async fn cursor<C: ClientInfo>(
        &self,
        client: &C,
        session: &Session,
        statement: CursorStatement,
        parameters: Vec<ScalarValue>,
        format: Option<&Format>,
    ) -> PgWireResult<Response> {
        Ok(match statement {
            CursorStatement::Declare {
                name,
                binary,
                hold,
                query,
            } => {
                if !hold && matches!(client.transaction_status(), TransactionStatus::Idle) {
                    return Err(errors::error(
                        "25P01",
                        "invalid_query",
                        "DECLARE CURSOR can only be used in transaction blocks (or declare it WITH HOLD)",
                    ));
                }
                session.cursors.check_room(&name).await?;
                let rows = self
                    .start(session, &query, parameters, statement_timeout(client))
                    .await?;
                let timeout = rows.timeout;
                session
                    .cursors
                    .declare(name, Cursor::new(rows, hold, binary), timeout)
                    .await?;
                Response::Execution(Tag::new("DECLARE CURSOR"))
            }
            CursorStatement::Fetch { name, count } => {
                // The FETCH is the connection's running query now.
                let cancel = session.cancel.query.start();
                Response::Query(session.cursors.fetch(&name, count, format, cancel).await?)
            }
            CursorStatement::Close(name) => {
                session.cursors.close(name.as_deref()).await?;
                Response::Execution(Tag::new("CLOSE CURSOR"))
            }
        })
    }

    /// Answers a session statement.
    async fn command<C: ClientInfo>(
        &self,
        client: &mut C,
        session: &Session,
        command: Command,
    ) -> PgWireResult<Response> {
        if matches!(command, Command::Commit | Command::Rollback) {
            session.cursors.end_transaction().await;
        }
        Ok(match command {
            Command::Set { name, value } => {
                client.metadata_mut().insert(name, value);
                Response::Execution(Tag::new("SET"))
            }
            Command::SetTransaction => Response::Execution(Tag::new("SET")),
            Command::Reset(Some(name)) => {
                client.metadata_mut().remove(&name);
                Response::Execution(Tag::new("RESET"))
            }
            Command::Reset(None) | Command::Discard => {
                for name in session::settable() {
                    client.metadata_mut().remove(name);
                }
                if command == Command::Discard {
                    session.cursors.close(None).await?;
                    Response::Execution(Tag::new("DISCARD ALL"))
                } else {
                    Response::Execution(Tag::new("RESET"))
                }
            }
            Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Command::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            Command::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            Command::Show(name) => {
                let value = setting(client, &name);
                let fields = Arc::new(show_fields(&name, FieldFormat::Text));
                let mut row = DataRowEncoder::new(Arc::clone(&fields));
                row.encode_field(&value)?;
                let row = row.take_row();
                Response::Query(QueryResponse::new(fields, futures::stream::iter([Ok(row)])))
            }
        })
    }
}

/// Counts `e` by its code and turns it into a Postgres error.
fn failed(state: &AppState, e: &ApiError) -> PgWireError {
    state
        .metrics()
        .pg_errors
        .get_or_create(&ErrorLabels {
            code: e.code().to_owned(),
        })
        .inc();
    errors::from_api(e)
}

/// A query's batches, counted in the server's metrics when the stream
/// ends (rows returned, bytes scanned), as an HTTP stream is.
struct Recorded {
    stream: QueryStream,
    state: AppState,
    recorded: bool,
}

impl futures::Stream for Recorded {
    type Item = Result<RecordBatch, ApiError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = self.stream.poll_next_unpin(cx);
        if let std::task::Poll::Ready(None) = &next
            && !self.recorded
            && let Some(stats) = self.stream.stats()
        {
            record(&self.state, stats);
            self.recorded = true;
        }
        next.map(|b| b.map(|b| b.map_err(ApiError::from)))
    }
}

/// An answer being sent: whole from the cache, or streaming.
enum Answer {
    Cached(Box<QueryResult>),
    Streaming(Box<QueryStream>),
}

/// The connection's session (its caller and cancel registration), put
/// there when it authenticated.
fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Session>> {
    client.session_extensions().get::<Session>().ok_or_else(|| {
        errors::error(
            "08P01",
            "unauthorized",
            "the connection has not authenticated",
        )
    })
}

/// The value of setting `name` on the connection: what it set, what its
/// startup message said, or the default.
fn setting<C: ClientInfo>(client: &C, name: &str) -> String {
    let metadata = client.metadata();
    metadata
        .get(name)
        .or_else(|| {
            metadata
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .cloned()
        .or_else(|| session::default_value(name).map(str::to_owned))
        .unwrap_or_default()
}

/// The connection's `statement_timeout`, if it set one.
fn statement_timeout<C: ClientInfo>(client: &C) -> Option<Duration> {
    match statement_timeout_ms(&setting(client, "statement_timeout")) {
        Some(0) | None => None,
        Some(ms) => Some(Duration::from_millis(ms)),
    }
}

/// The one column `SHOW name` answers.
fn show_fields(name: &str, format: FieldFormat) -> Vec<FieldInfo> {
    vec![FieldInfo::new(
        name.to_owned(),
        None,
        None,
        Type::TEXT,
        format,
    )]
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        match session::classify(query)? {
            Statement::Empty => Ok(vec![Response::EmptyQuery]),
            Statement::Command(command) => Ok(vec![self.command(client, &session, command).await?]),
            Statement::Cursor(statement) => Ok(vec![
                self.cursor(client, &session, statement, Vec::new(), None)
                    .await?,
            ]),
            Statement::Query => {
                if shardlake_query::split_statements(query).is_ok_and(|s| s.len() > 1) {
                    return Err(errors::error(
                        "0A000",
                        "statement_not_allowed",
                        "send one statement at a time: several statements in one query are not supported",
                    ));
                }
                let timeout = statement_timeout(client);
                let rows = self
                    .run(&session, query, Vec::new(), &Format::UnifiedText, timeout)
                    .await?;
                Ok(vec![Response::Query(rows)])
            }
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = PgStatement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::clone(&self.parser)
    }

    /// A cursor is described by its name (psycopg describes the cursor it
    /// declared, as a portal), and a `FETCH` by its cursor's columns;
    /// everything else as pgwire does.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let store = client.portal_store();
        // (cursor, format, a portal?, the cursor's own name?)
        let (cursor, format, portal, by_name) = match message.target_type {
            TARGET_TYPE_BYTE_PORTAL => match store.get_portal(name) {
                Some(portal) => match fetched_cursor(&portal.statement.statement) {
                    Some(cursor) => (
                        cursor,
                        Some(portal.result_column_format.clone()),
                        true,
                        false,
                    ),
                    None => return self._on_describe(client, message).await,
                },
                None => (name.to_owned(), None, true, true),
            },
            TARGET_TYPE_BYTE_STATEMENT => {
                match store
                    .get_statement(name)
                    .and_then(|s| fetched_cursor(&s.statement))
                {
                    Some(cursor) => (cursor, None, false, false),
                    None => return self._on_describe(client, message).await,
                }
            }
            _ => return self._on_describe(client, message).await,
        };
        let session = session_of(client)?;
        let Some(fields) = session.cursors.fields(&cursor, format.as_ref()).await else {
            return match by_name {
                true => Err(PgWireError::PortalNotFound(name.to_owned())),
                false => Err(cursor::missing(&cursor)),
            };
        };
        let fields = fields?;
        if portal {
            send_describe_response(client, &DescribePortalResponse::new(fields)).await
        } else {
            let described = DescribeStatementResponse::new(Vec::new(), fields);
            send_describe_response(client, &described).await
        }
    }

    /// A whole-result `Execute` streams its rows; a fetch size (or a
    /// portal already started) goes through pgwire's portal, which sends
    /// at most that many rows and keeps the rest for the next `Execute`.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let Some(portal) = client.portal_store().get_portal(name) else {
            return Err(PgWireError::PortalNotFound(name.to_owned()));
        };
        let fresh = matches!(*portal.state().lock().await, PortalExecutionState::Initial);
        if message.max_rows != 0 || !fresh {
            return self._on_execute(client, message).await;
        }
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let mut status = client.transaction_status();
        client.set_state(PgWireConnectionState::QueryInProgress);
        let sent = match ExtendedQueryHandler::do_query(self, client, &portal, 0).await? {
            Response::Query(rows) => send_query_response(client, rows, false).await,
            Response::EmptyQuery => client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await
                .map_err(PgWireError::from),
            Response::Execution(tag) => send_execution_response(client, tag).await,
            Response::TransactionStart(tag) => {
                status = status.to_in_transaction_state();
                send_execution_response(client, tag).await
            }
            Response::TransactionEnd(tag) => {
                status = status.to_idle_state();
                send_execution_response(client, tag).await
            }
            _ => Err(errors::error(
                "XX000",
                "internal_error",
                "unexpected response to Execute",
            )),
        };
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
        sent
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        match &portal.statement.statement {
            PgStatement::Empty => Ok(Response::EmptyQuery),
            PgStatement::Command(command) => self.command(client, &session, command.clone()).await,
            PgStatement::Cursor {
                statement,
                description,
            } => {
                let parameters = match description {
                    Some(description) => types::parameters(portal, description)?,
                    None => Vec::new(),
                };
                self.cursor(
                    client,
                    &session,
                    statement.clone(),
                    parameters,
                    Some(&portal.result_column_format),
                )
                .await
            }
            PgStatement::Query { sql, description } => {
                let parameters = types::parameters(portal, description)?;
                let timeout = statement_timeout(client);
                let rows = self
                    .run(
                        &session,
                        sql,
                        parameters,
                        &portal.result_column_format,
                        timeout,
                    )
                    .await?;
                Ok(Response::Query(rows))
            }
        }
    }
}

/// The cursor a `FETCH` statement reads.
fn fetched_cursor(statement: &PgStatement) -> Option<String> {
    match statement {
        PgStatement::Cursor {
            statement: CursorStatement::Fetch { name, .. },
            ..
        } => Some(name.clone()),
        _ => None,
    }
}

/// Parses and describes statements of the extended protocol.
pub(super) struct Parser {
    state: AppState,
}

impl Parser {
    /// What `sql` takes and returns.
    async fn describe(&self, sql: &str) -> PgWireResult<Description> {
        self.state
            .engine()
            .describe(sql, SqlDialect::Postgres)
            .await
            .map_err(|e| failed(&self.state, &ApiError::from(e)))
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<PgStatement>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        session_of(client)?;
        match session::classify(sql)? {
            Statement::Empty => Ok(PgStatement::Empty),
            Statement::Command(command) => Ok(PgStatement::Command(command)),
            Statement::Cursor(statement) => {
                let description = match &statement {
                    CursorStatement::Declare { query, .. } => {
                        Some(Arc::new(self.describe(query).await?))
                    }
                    _ => None,
                };
                Ok(PgStatement::Cursor {
                    statement,
                    description,
                })
            }
            Statement::Query => Ok(PgStatement::Query {
                sql: sql.into(),
                description: Arc::new(self.describe(sql).await?),
            }),
        }
    }

    fn get_parameter_types(&self, statement: &PgStatement) -> PgWireResult<Vec<Type>> {
        match statement {
            PgStatement::Query { description, .. }
            | PgStatement::Cursor {
                description: Some(description),
                ..
            } => description
                .parameters
                .iter()
                .map(|t| types::parameter_type(t.as_ref()))
                .collect(),
            _ => Ok(Vec::new()),
        }
    }

    fn get_result_schema(
        &self,
        statement: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.unwrap_or(&Format::UnifiedText);
        match statement {
            PgStatement::Query { description, .. } => types::fields(&description.schema, format),
            PgStatement::Command(Command::Show(name)) => {
                Ok(show_fields(name, format.format_for(0)))
            }
            _ => Ok(Vec::new()),
        }
    }
}
