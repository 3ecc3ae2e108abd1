//! SQL-level cursors: `DECLARE name CURSOR FOR query`, `FETCH n FROM name`,
//! `CLOSE name`. psycopg's named cursors, JDBC with a fetch size inside a
//! transaction and psql's `\set FETCH_COUNT` read large results this way.
//!
//! A cursor is the query's row stream, kept on the connection: `FETCH n`
//! takes the next `n` rows from it, so memory stays bounded by the fetch
//! size however large the result (the engine's stream stays one batch
//! ahead; `FETCH ALL` streams). Cursors only move forward (as Postgres's
//! `NO SCROLL`). One declared `WITHOUT HOLD` (the default) may only be
//! declared in a transaction block and closes when it ends, as in Postgres;
//! `DISCARD ALL` closes every cursor. A cursor holds its query's slot and
//! snapshot pin until it is closed, its transaction ends or its query's
//! timeout passes (a timer fails it then, read or not), so a connection
//! keeps at most a few open, and none for longer than a query may run. A
//! FETCH is the connection's running query: a cancel request stops it.
//! After an error, a cancel or the timeout, every FETCH fails the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use futures::StreamExt;
use futures::stream::BoxStream;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use tokio_util::sync::CancellationToken;

use super::errors::{self, error};
use super::handler::Rows;
use super::types;
use crate::error::ApiError;

/// Cursors one connection may keep open at once.
pub(super) const MAX_OPEN: usize = 16;

/// A cursor statement, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CursorStatement {
    /// `DECLARE name [BINARY] ... CURSOR [WITH[OUT] HOLD] FOR query`
    /// (`BINARY`: a FETCH of the simple protocol answers in binary).
    Declare {
        name: String,
        binary: bool,
        hold: bool,
        query: String,
    },
    /// `FETCH [NEXT | n | FORWARD [n | ALL] | ALL] [FROM | IN] name`
    /// (`count: None`: all the remaining rows).
    Fetch { name: String, count: Option<u64> },
    /// `CLOSE name` (`None`: `CLOSE ALL`).
    Close(Option<String>),
}

/// An open cursor: its query's batches, not fetched yet.
pub(super) struct Cursor {
    rows: Rows,
    /// Rows of a batch read past the last fetch.
    pending: Option<RecordBatch>,
    /// The last row was fetched (or the cursor failed).
    done: bool,
    /// Why it failed (an error of its query, a cancel, its timeout): every
    /// later FETCH fails the same way, never as an empty end of rows.
    failure: Option<Failure>,
    hold: bool,
    /// Declared `BINARY`: a simple-protocol FETCH answers in binary.
    binary: bool,
    /// Which declaration this is (a timer closes this one, not a later
    /// cursor of the same name).
    id: u64,
}

impl Cursor {
    /// A cursor over `rows`.
    pub(super) fn new(rows: Rows, hold: bool, binary: bool) -> Self {
        Self {
            rows,
            pending: None,
            done: false,
            failure: None,
            hold,
            binary,
            id: 0,
        }
    }

    /// The format of its rows unless a FETCH of the extended protocol
    /// asks for one.
    fn declared_format(&self) -> Format {
        if self.binary {
            Format::UnifiedBinary
        } else {
            Format::UnifiedText
        }
    }

    /// Its columns, in `format` (`None`: as declared).
    fn fields(&self, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match format {
            Some(format) => types::fields(&self.rows.schema, format),
            None => types::fields(&self.rows.schema, &self.declared_format()),
        }
    }

    /// Ends the cursor with `e`: its query stops (its slot and snapshot
    /// are let go) and every later FETCH fails with `e`.
    fn fail(&mut self, e: &PgWireError) -> PgWireError {
        let failure = match e {
            PgWireError::UserError(info) => Failure {
                sqlstate: info.code.clone(),
                message: info.message.clone(),
                detail: info.detail.clone(),
            },
            other => Failure {
                sqlstate: "XX000".into(),
                message: other.to_string(),
                detail: None,
            },
        };
        self.rows.batches = futures::stream::empty().boxed();
        self.pending = None;
        self.done = true;
        let error = failure.error();
        self.failure = Some(failure);
        error
    }

    /// The next `count` rows (`None`: all that remain, streamed as they
    /// come) in `format` (`None`: as declared), tagged `FETCH n` as
    /// Postgres does. `cancel` is the FETCH's own: a cancel request stops
    /// it while it collects rows or sends them, and ends the cursor.
    pub(super) async fn fetch(
        &mut self,
        count: Option<u64>,
        format: Option<&Format>,
        cancel: CancellationToken,
    ) -> PgWireResult<QueryResponse> {
        if let Some(failure) = &self.failure {
            return Err(failure.error());
        }
        let fields = Arc::new(self.fields(format)?);
        let batches: BoxStream<'static, Result<RecordBatch, ApiError>> = match count {
            _ if self.done => futures::stream::empty().boxed(),
            None => {
                self.done = true;
                let rest =
                    std::mem::replace(&mut self.rows.batches, futures::stream::empty().boxed());
                futures::stream::iter(self.pending.take().map(Ok))
                    .chain(rest)
                    .boxed()
            }
            Some(n) => {
                let mut wanted = usize::try_from(n).unwrap_or(usize::MAX);
                let mut taken = Vec::new();
                while wanted > 0 {
                    let batch = match self.pending.take() {
                        Some(batch) => batch,
                        None => {
                            let next = tokio::select! {
                                biased;
                                () = cancel.cancelled() => return Err(self.fail(&errors::cancelled())),
                                next = self.rows.batches.next() => next,
                            };
                            match next {
                                Some(Ok(batch)) => batch,
                                Some(Err(e)) => return Err(self.fail(&errors::from_api(&e))),
                                None => {
                                    self.done = true;
                                    break;
                                }
                            }
                        }
                    };
                    if batch.num_rows() > wanted {
                        self.pending = Some(batch.slice(wanted, batch.num_rows() - wanted));
                        taken.push(batch.slice(0, wanted));
                        wanted = 0;
                    } else {
                        wanted -= batch.num_rows();
                        taken.push(batch);
                    }
                }
                futures::stream::iter(taken.into_iter().map(Ok)).boxed()
            }
        };
        let mut response =
            QueryResponse::new(Arc::clone(&fields), types::rows(fields, batches, cancel));
        response.set_command_tag("FETCH");
        Ok(response)
    }
}

/// Why a cursor failed, kept to fail every later FETCH the same way.
struct Failure {
    sqlstate: String,
    message: String,
    detail: Option<String>,
}

impl Failure {
    fn error(&self) -> PgWireError {
        let mut info = ErrorInfo::new("ERROR".into(), self.sqlstate.clone(), self.message.clone());
        info.detail = self.detail.clone();
        PgWireError::UserError(Box::new(info))
    }
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("columns", &self.rows.schema.fields().len())
            .field("done", &self.done)
            .field("failed", &self.failure.is_some())
            .field("hold", &self.hold)
            .finish()
    }
}

/// A connection's open cursors.
#[derive(Debug, Default)]
pub(super) struct Cursors {
    open: Arc<tokio::sync::Mutex<HashMap<String, Cursor>>>,
    declared: AtomicU64,
}

impl Cursors {
    /// Fails unless a cursor named `name` could be declared now.
    pub(super) async fn check_room(&self, name: &str) -> Result<(), PgWireError> {
        let open = self.open.lock().await;
        if open.contains_key(name) {
            return Err(error(
                "42P03",
                "invalid_query",
                format!("cursor \"{name}\" already exists"),
            ));
        }
        if open.len() >= MAX_OPEN {
            return Err(error(
                "54000",
                "too_many_queries",
                format!("a connection may keep {MAX_OPEN} cursors open at a time; close one first"),
            ));
        }
        Ok(())
    }

    /// Keeps `cursor` as `name` until it is closed, its transaction ends
    /// (unless it holds) or its query's timeout passes: a cursor nobody
    /// reads from does not keep its query slot past the timeout.
    pub(super) async fn declare(
        &self,
        name: String,
        mut cursor: Cursor,
        timeout: Duration,
    ) -> Result<(), PgWireError> {
        self.check_room(&name).await?;
        let id = self.declared.fetch_add(1, Ordering::Relaxed);
        cursor.id = id;
        self.open.lock().await.insert(name.clone(), cursor);
        let open = Arc::downgrade(&self.open);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(open) = open.upgrade() else {
                return; // the connection is gone
            };
            let mut open = open.lock().await;
            if let Some(cursor) = open.get_mut(&name)
                && cursor.id == id
                && cursor.failure.is_none()
                && !cursor.done
            {
                cursor.fail(&error(
                    "57014",
                    "query_timeout",
                    format!(
                        "cursor \"{name}\": its query ran past the timeout of {} ms",
                        timeout.as_millis()
                    ),
                ));
            }
        });
        Ok(())
    }

    /// The next rows of cursor `name`, in `format` (`None`: as declared).
    pub(super) async fn fetch(
        &self,
        name: &str,
        count: Option<u64>,
        format: Option<&Format>,
        cancel: CancellationToken,
    ) -> PgWireResult<QueryResponse> {
        let mut open = self.open.lock().await;
        let cursor = open.get_mut(name).ok_or_else(|| missing(name))?;
        cursor.fetch(count, format, cancel).await
    }

    /// The columns of cursor `name` in `format` (`None`: as declared);
    /// `None` when there is no such cursor.
    pub(super) async fn fields(
        &self,
        name: &str,
        format: Option<&Format>,
    ) -> Option<PgWireResult<Vec<FieldInfo>>> {
        self.open.lock().await.get(name).map(|c| c.fields(format))
    }

    /// Closes cursor `name` (`None`: all of them).
    pub(super) async fn close(&self, name: Option<&str>) -> Result<(), PgWireError> {
        let mut open = self.open.lock().await;
        match name {
            None => open.clear(),
            Some(name) => {
                open.remove(name).ok_or_else(|| missing(name))?;
            }
        }
        Ok(())
    }

    /// Closes the cursors of the transaction that ended (all but those
    /// declared `WITH HOLD`).
    pub(super) async fn end_transaction(&self) {
        self.open.lock().await.retain(|_, cursor| cursor.hold);
    }
}

/// The error of a cursor that does not exist.
pub(super) fn missing(name: &str) -> PgWireError {
    error(
        "34000",
        "invalid_query",
        format!("cursor \"{name}\" does not exist"),
    )
}

/// Reads `text` (one statement as the client sent it, comments and a
/// trailing `;` included) as a cursor statement; `None` when it is not one.
pub(super) fn parse(text: &str) -> Option<Result<CursorStatement, PgWireError>> {
    // The first word decides, before anything else is read (most texts are
    // queries, some of them megabytes long).
    let start = skip_blanks(text.as_bytes(), 0);
    let word: String = text[start..]
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .take(8)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if !matches!(word.as_str(), "declare" | "fetch" | "close" | "move") {
        return None;
    }
    let tokens = tokens(text);
    let first = tokens.first()?;
    let statement = match first.word.as_str() {
        "declare" => declare(text, &tokens),
        "fetch" => fetch(&tokens[1..]),
        "close" => match &tokens[1..] {
            [all] if all.is_keyword("all") => Ok(CursorStatement::Close(None)),
            [name] => Ok(CursorStatement::Close(Some(name.word.clone()))),
            _ => Err(syntax("CLOSE name")),
        },
        "move" => Err(error(
            "0A000",
            "statement_not_allowed",
            "MOVE is not supported: shardlake's cursors only FETCH forward",
        )),
        _ => return None,
    };
    Some(statement)
}

fn declare(text: &str, tokens: &[Token]) -> Result<CursorStatement, PgWireError> {
    let usage = "DECLARE name [BINARY] [NO SCROLL] CURSOR [WITH HOLD | WITHOUT HOLD] FOR query";
    let Some(name) = tokens.get(1) else {
        return Err(syntax(usage));
    };
    let (mut binary, mut hold) = (false, false);
    let mut rest = tokens[2..].iter().peekable();
    loop {
        match rest.next() {
            Some(t) if t.is_keyword("binary") => binary = true,
            Some(t) if t.is_keyword("asensitive") || t.is_keyword("insensitive") => {}
            Some(t) if t.is_keyword("no") => match rest.next() {
                Some(t) if t.is_keyword("scroll") => {}
                _ => return Err(syntax(usage)),
            },
            Some(t) if t.is_keyword("scroll") => {
                return Err(error(
                    "0A000",
                    "statement_not_allowed",
                    "SCROLL cursors are not supported: shardlake's cursors only move forward",
                ));
            }
            Some(t) if t.is_keyword("cursor") => break,
            _ => return Err(syntax(usage)),
        }
    }
    match rest.next() {
        Some(t) if t.is_keyword("with") || t.is_keyword("without") => {
            hold = t.is_keyword("with");
            if !rest.next().is_some_and(|t| t.is_keyword("hold")) {
                return Err(syntax(usage));
            }
            match rest.next() {
                Some(t) if t.is_keyword("for") => declared(text, t, &name.word, binary, hold),
                _ => Err(syntax(usage)),
            }
        }
        Some(t) if t.is_keyword("for") => declared(text, t, &name.word, binary, hold),
        _ => Err(syntax(usage)),
    }
}

fn declared(
    text: &str,
    for_keyword: &Token,
    name: &str,
    binary: bool,
    hold: bool,
) -> Result<CursorStatement, PgWireError> {
    let query = text[for_keyword.end..].trim_matches(|c: char| c == ';' || c.is_whitespace());
    if query.is_empty() {
        return Err(syntax("DECLARE name CURSOR FOR query"));
    }
    Ok(CursorStatement::Declare {
        name: name.to_owned(),
        binary,
        hold,
        query: query.to_owned(),
    })
}

fn fetch(tokens: &[Token]) -> Result<CursorStatement, PgWireError> {
    let usage = "FETCH [NEXT | count | FORWARD [count | ALL] | ALL] [FROM | IN] name";
    let backward = || {
        error(
            "55000",
            "statement_not_allowed",
            "cursor can only scan forward: shardlake's cursors are NO SCROLL",
        )
    };
    let count = |t: &Token| -> Result<u64, PgWireError> {
        t.word
            .parse::<u64>()
            .map_err(|_| match t.word.parse::<i64>() {
                // A negative count reads backward.
                Ok(_) => backward(),
                Err(_) => syntax(usage),
            })
    };
    let (count, rest) = match tokens {
        [t, rest @ ..] if t.is_keyword("next") => (Some(1), rest),
        [t, rest @ ..] if t.is_keyword("all") => (None, rest),
        [t, n, rest @ ..] if t.is_keyword("forward") && n.is_keyword("all") => (None, rest),
        [t, n, rest @ ..] if t.is_keyword("forward") && n.is_number() => (Some(count(n)?), rest),
        [t, rest @ ..] if t.is_keyword("forward") => (Some(1), rest),
        [t, ..]
            if ["prior", "first", "last", "absolute", "relative", "backward"]
                .iter()
                .any(|k| t.is_keyword(k)) =>
        {
            return Err(backward());
        }
        [n, rest @ ..] if n.is_number() => (Some(count(n)?), rest),
        rest => (Some(1), rest),
    };
    let rest = match rest {
        [t, rest @ ..] if t.is_keyword("from") || t.is_keyword("in") => rest,
        rest => rest,
    };
    match rest {
        [name] => Ok(CursorStatement::Fetch {
            name: name.word.clone(),
            count,
        }),
        _ => Err(syntax(usage)),
    }
}

fn syntax(usage: &str) -> PgWireError {
    error(
        "42601",
        "invalid_query",
        format!("syntax error: expected `{usage}`"),
    )
}

/// A word of a cursor statement: an unquoted one in lower case, a quoted
/// identifier as written; where it ends in the text.
#[derive(Debug)]
struct Token {
    word: String,
    quoted: bool,
    end: usize,
}

impl Token {
    fn is_keyword(&self, keyword: &str) -> bool {
        !self.quoted && self.word == keyword
    }

    fn is_number(&self) -> bool {
        !self.quoted
            && self
                .word
                .strip_prefix(['-', '+'])
                .unwrap_or(&self.word)
                .chars()
                .all(|c| c.is_ascii_digit())
            && self.word.chars().any(|c| c.is_ascii_digit())
    }
}

/// The words of `text` up to (and including) the first `FOR` (what follows
/// is the query, taken from the text as the client sent it), comments and
/// `;` skipped.
fn tokens(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut i = skip_blanks(bytes, 0);
    while i < bytes.len() {
        if bytes[i] == b'"' {
            let mut word = String::new();
            let mut j = i + 1;
            while j < bytes.len() {
                if bytes[j] == b'"' {
                    if bytes.get(j + 1) == Some(&b'"') {
                        word.push('"');
                        j += 2;
                        continue;
                    }
                    break;
                }
                let c = text[j..].chars().next().unwrap_or('"');
                word.push(c);
                j += c.len_utf8();
            }
            let end = (j + 1).min(bytes.len());
            tokens.push(Token {
                word,
                quoted: true,
                end,
            });
            i = skip_blanks(bytes, end);
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_blank_or_comment(bytes, i) && bytes[i] != b'"' {
            i += 1;
        }
        let token = Token {
            word: text[start..i].to_lowercase(),
            quoted: false,
            end: i,
        };
        let stop = token.is_keyword("for");
        tokens.push(token);
        if stop {
            break;
        }
        i = skip_blanks(bytes, i);
    }
    tokens
}

/// Whether a blank (whitespace, `;`) or a comment starts at `i`.
fn is_blank_or_comment(bytes: &[u8], i: usize) -> bool {
    bytes[i].is_ascii_whitespace()
        || bytes[i] == b';'
        || bytes[i..].starts_with(b"--")
        || bytes[i..].starts_with(b"/*")
}

/// The first position at or after `i` that is not a blank or in a comment.
fn skip_blanks(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        if bytes[i..].starts_with(b"--") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i..].starts_with(b"/*") {
            i += 2;
            while i < bytes.len() && !bytes[i..].starts_with(b"*/") {
                i += 1;
            }
            i = (i + 2).min(bytes.len());
        } else if bytes[i].is_ascii_whitespace() || bytes[i] == b';' {
            i += 1;
        } else {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(sql: &str) -> CursorStatement {
        match parse(sql) {
            Some(Ok(statement)) => statement,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn sqlstate(sql: &str) -> String {
        match parse(sql) {
            Some(Err(PgWireError::UserError(info))) => info.code.clone(),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn declare_as_psycopg_and_psql_send_it() {
        assert_eq!(
            parsed(
                r#"DECLARE "my ""c""" CURSOR WITHOUT HOLD FOR SELECT * FROM events WHERE namespace = $1"#
            ),
            CursorStatement::Declare {
                name: r#"my "c""#.into(),
                binary: false,
                hold: false,
                query: "SELECT * FROM events WHERE namespace = $1".into(),
            }
        );
        assert_eq!(
            parsed("declare C binary no scroll cursor with hold for\n select 1"),
            CursorStatement::Declare {
                name: "c".into(),
                binary: true,
                hold: true,
                query: "select 1".into(),
            }
        );
        // Comments around the words; the query is kept as sent (a comment
        // marker inside one of its strings stays).
        assert_eq!(
            parsed("/* psycopg */ DECLARE -- named\n c CURSOR FOR SELECT E'\\'--x' AS s;"),
            CursorStatement::Declare {
                name: "c".into(),
                binary: false,
                hold: false,
                query: "SELECT E'\\'--x' AS s".into(),
            }
        );
        assert_eq!(sqlstate("DECLARE c SCROLL CURSOR FOR SELECT 1"), "0A000");
        assert_eq!(sqlstate("DECLARE c CURSOR SELECT 1"), "42601");
        assert_eq!(sqlstate("DECLARE c CURSOR FOR"), "42601");
        assert!(parse("SELECT 1").is_none());
    }

    #[test]
    fn fetch_forward_only() {
        let fetch = |name: &str, count| CursorStatement::Fetch {
            name: name.into(),
            count,
        };
        assert_eq!(
            parsed(r#"FETCH FORWARD 1000 FROM "c""#),
            fetch("c", Some(1000))
        );
        assert_eq!(parsed("fetch 5 in c"), fetch("c", Some(5)));
        assert_eq!(parsed("FETCH c"), fetch("c", Some(1)));
        assert_eq!(parsed("FETCH NEXT FROM c"), fetch("c", Some(1)));
        assert_eq!(parsed("FETCH ALL FROM c"), fetch("c", None));
        assert_eq!(parsed("FETCH FORWARD ALL c"), fetch("c", None));
        assert_eq!(sqlstate("FETCH PRIOR FROM c"), "55000");
        assert_eq!(sqlstate("FETCH -1 FROM c"), "55000");
        assert_eq!(sqlstate("FETCH 1 FROM"), "42601");
        assert_eq!(sqlstate("MOVE 1 IN c"), "0A000");
        assert_eq!(parsed("CLOSE ALL;"), CursorStatement::Close(None));
        assert_eq!(parsed("fetch 2 from c ; "), fetch("c", Some(2)));
        assert_eq!(
            parsed(r#"CLOSE "C""#),
            CursorStatement::Close(Some("C".into()))
        );
    }
}
