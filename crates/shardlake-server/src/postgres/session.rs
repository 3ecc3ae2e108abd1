//! The statements a Postgres client sends that are about its session, not
//! the data: `SET`, `SHOW`, `RESET`, transaction control. Drivers and BI
//! tools send them on connect; shardlake accepts the harmless ones (and
//! remembers what was set, for `SHOW`), answers transaction control as
//! no-ops (every query is read-only and sees one snapshot), and refuses
//! the rest with a Postgres error. Everything else goes to the engine,
//! which allows queries only.

use pgwire::error::PgWireError;

use super::cursor::{self, CursorStatement};
use super::errors::error;

/// A session statement, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    /// `SET name = value` of an accepted client setting (name lower case).
    Set { name: String, value: String },
    /// `SET TRANSACTION ...`, `SET SESSION CHARACTERISTICS ...`: read only
    /// is all there is.
    SetTransaction,
    /// `RESET name` (`None`: `RESET ALL`).
    Reset(Option<String>),
    /// `DISCARD ALL`: settings reset, cursors closed.
    Discard,
    /// `SHOW name` of a setting shardlake answers itself.
    Show(String),
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
}

/// What a statement is.
#[derive(Debug)]
pub(super) enum Statement {
    /// Nothing (whitespace, semicolons, comments).
    Empty,
    /// A session statement.
    Command(Command),
    /// A cursor statement.
    Cursor(CursorStatement),
    /// For the engine.
    Query,
}

/// Client settings a `SET` may change, and their value when never set.
/// What they mean is fixed: timestamps are always UTC, dates ISO.
const SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("datestyle", "ISO, MDY"),
    ("extra_float_digits", "1"),
    ("intervalstyle", "postgres"),
    ("search_path", "public"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("bytea_output", "hex"),
];

/// Settings only `SHOW` answers (not settable).
const READ_ONLY_SETTINGS: &[(&str, &str)] = &[
    ("server_version", super::SERVER_VERSION),
    ("server_encoding", "UTF8"),
    ("transaction_isolation", "repeatable read"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
    ("max_identifier_length", "63"),
    ("integer_datetimes", "on"),
];

/// The settings a client may `SET`.
pub(super) fn settable() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().map(|(name, _)| *name)
}

/// The value of setting `name` when the session never set it.
pub(super) fn default_value(name: &str) -> Option<&'static str> {
    SETTINGS
        .iter()
        .chain(READ_ONLY_SETTINGS)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

/// Classifies `sql`; a session statement that is not accepted is an error.
pub(super) fn classify(sql: &str) -> Result<Statement, PgWireError> {
    let text = strip_comments(sql);
    let text = text
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    if text
        .trim_matches(|c: char| c == ';' || c.is_whitespace())
        .is_empty()
    {
        return Ok(Statement::Empty);
    }
    // Cursor statements are read from the text as sent: a DECLARE's query
    // is kept as the client wrote it.
    if let Some(cursor) = cursor::parse(sql) {
        return cursor.map(Statement::Cursor);
    }
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let command = match words.as_slice() {
        ["begin", ..] | ["start", "transaction", ..] => Command::Begin,
        ["commit", ..] | ["end", ..] => Command::Commit,
        ["rollback", ..] | ["abort", ..] => Command::Rollback,
        ["discard", "all"] => Command::Discard,
        ["reset", "all"] => Command::Reset(None),
        ["reset", name] => Command::Reset(Some(setting_name(name))),
        ["set", "transaction", ..] | ["set", "session", "characteristics", ..] => {
            if lower.contains("read write") {
                return Err(error(
                    "25006",
                    "statement_not_allowed",
                    "shardlake is read-only over the Postgres protocol: a READ WRITE transaction is not available",
                ));
            }
            Command::SetTransaction
        }
        ["set", ..] => set(text)?,
        // The engine's own: tables and columns of the lake.
        ["show", "tables", ..] | ["show", "columns", ..] => return Ok(Statement::Query),
        ["show", "transaction", "isolation", "level"] => {
            Command::Show("transaction_isolation".into())
        }
        ["show", name] => {
            let name = setting_name(name);
            if default_value(&name).is_none() {
                return Err(error(
                    "42704",
                    "invalid_query",
                    format!("unrecognized configuration parameter \"{name}\""),
                ));
            }
            Command::Show(name)
        }
        ["copy", ..] => {
            return Err(error(
                "0A000",
                "statement_not_allowed",
                "COPY is not supported: shardlake is read-only over the Postgres protocol; \
                 use a query (or a server-side cursor) to read rows",
            ));
        }
        ["prepare", ..]
        | ["execute", ..]
        | ["deallocate", ..]
        | ["listen", ..]
        | ["notify", ..]
        | ["unlisten", ..] => {
            return Err(error(
                "0A000",
                "statement_not_allowed",
                format!(
                    "`{}` is not supported; use the extended protocol's prepared statements and portals",
                    words[0].to_ascii_uppercase()
                ),
            ));
        }
        _ => return Ok(Statement::Query),
    };
    Ok(Statement::Command(command))
}

/// `SET [SESSION | LOCAL] name { TO | = } value`, `SET TIME ZONE value`.
fn set(text: &str) -> Result<Command, PgWireError> {
    let rest = text["set".len()..].trim_start();
    let lower = rest.to_ascii_lowercase();
    let rest = if lower.starts_with("session ") {
        rest["session ".len()..].trim_start()
    } else if lower.starts_with("local ") {
        rest["local ".len()..].trim_start()
    } else {
        rest
    };
    let lower = rest.to_ascii_lowercase();
    let (name, value) = if lower.starts_with("time zone") {
        ("timezone".to_owned(), rest["time zone".len()..].trim())
    } else {
        let split = rest
            .find('=')
            .map(|i| (i, 1))
            .or_else(|| lower.find(" to ").map(|i| (i, 4)));
        let Some((at, width)) = split else {
            return Err(error(
                "42601",
                "invalid_query",
                format!("syntax error in SET: expected `SET name = value`, got `SET {rest}`"),
            ));
        };
        (setting_name(rest[..at].trim()), rest[at + width..].trim())
    };
    let value = unquote(value);
    if name.starts_with("datafusion.") || name.starts_with("shardlake.") {
        return Err(error(
            "42501",
            "statement_not_allowed",
            format!(
                "engine options cannot be changed by a client: `{name}` is set in the server's configuration"
            ),
        ));
    }
    if !SETTINGS.iter().any(|(n, _)| *n == name) {
        return Err(error(
            "0A000",
            "statement_not_allowed",
            format!("setting \"{name}\" is not supported by shardlake"),
        ));
    }
    check_value(&name, &value)?;
    Ok(Command::Set { name, value })
}

/// Refuses a value shardlake would not honour (timestamps are always
/// written in UTC, dates in ISO order, text in UTF-8).
fn check_value(name: &str, value: &str) -> Result<(), PgWireError> {
    let v = value.to_ascii_lowercase();
    let ok = match name {
        "timezone" => matches!(
            v.as_str(),
            "utc" | "gmt" | "etc/utc" | "z" | "+00:00" | "0" | "default" | "local"
        ),
        "client_encoding" => matches!(v.as_str(), "utf8" | "utf-8" | "unicode" | "default"),
        "datestyle" => v.contains("iso") || v == "default",
        "statement_timeout" => statement_timeout_ms(value).is_some(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(error(
            "22023",
            "invalid_request",
            format!(
                "shardlake supports {name} = {} only, not `{value}`",
                default_value(name).unwrap_or("its default")
            ),
        ))
    }
}

/// `statement_timeout` in milliseconds (`0`: none), as Postgres reads it:
/// a number of milliseconds, or a number with a unit.
pub(super) fn statement_timeout_ms(value: &str) -> Option<u64> {
    let v = value.trim().to_ascii_lowercase();
    if v == "default" {
        return Some(0);
    }
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A setting's name as Postgres compares it: lower case, unquoted.
fn setting_name(name: &str) -> String {
    unquote(name).to_ascii_lowercase()
}

/// `value` without the quotes around it (`'UTF8'`, `"public"`).
fn unquote(value: &str) -> String {
    let v = value.trim();
    for q in ['\'', '"'] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].replace(&format!("{q}{q}"), &q.to_string());
        }
    }
    v.to_owned()
}

/// `sql` without `--` line comments and `/* */` block comments outside
/// quotes (clients prefix statements with them).
fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '-' && chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            None if c == '/' && chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(sql: &str) -> Command {
        match classify(sql) {
            Ok(Statement::Command(c)) => c,
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn sqlstate(sql: &str) -> String {
        match classify(sql) {
            Err(PgWireError::UserError(info)) => info.code.clone(),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn client_settings_are_accepted_and_engine_options_refused() {
        assert_eq!(
            command("SET application_name = 'psql'"),
            Command::Set {
                name: "application_name".into(),
                value: "psql".into()
            }
        );
        assert_eq!(
            command("set extra_float_digits to 3;"),
            Command::Set {
                name: "extra_float_digits".into(),
                value: "3".into()
            }
        );
        assert_eq!(
            command("SET DateStyle = 'ISO'"),
            Command::Set {
                name: "datestyle".into(),
                value: "ISO".into()
            }
        );
        assert_eq!(
            command("SET TIME ZONE 'UTC'"),
            Command::Set {
                name: "timezone".into(),
                value: "UTC".into()
            }
        );
        assert_eq!(
            command("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            Command::SetTransaction
        );
        assert_eq!(
            sqlstate("SET datafusion.execution.target_partitions = 64"),
            "42501"
        );
        assert_eq!(sqlstate("SET work_mem = '1GB'"), "0A000");
        assert_eq!(sqlstate("SET TIME ZONE 'Europe/Paris'"), "22023");
        assert_eq!(sqlstate("SET TRANSACTION READ WRITE"), "25006");
        assert_eq!(sqlstate("SET x"), "42601");
    }

    #[test]
    fn transactions_show_and_refusals() {
        assert_eq!(command("BEGIN"), Command::Begin);
        assert_eq!(command("start transaction read only"), Command::Begin);
        assert_eq!(command("COMMIT;"), Command::Commit);
        assert_eq!(command("ROLLBACK"), Command::Rollback);
        assert_eq!(command("DISCARD ALL"), Command::Discard);
        assert_eq!(command("RESET ALL"), Command::Reset(None));
        assert_eq!(
            command("SHOW server_version"),
            Command::Show("server_version".into())
        );
        assert_eq!(
            command("SHOW TRANSACTION ISOLATION LEVEL"),
            Command::Show("transaction_isolation".into())
        );
        assert_eq!(sqlstate("SHOW shared_buffers"), "42704");
        assert_eq!(sqlstate("COPY events TO STDOUT"), "0A000");
        assert!(matches!(
            classify("/* psycopg */ DECLARE c CURSOR FOR SELECT 1;"),
            Ok(Statement::Cursor(CursorStatement::Declare { .. }))
        ));
        assert_eq!(sqlstate("PREPARE p AS SELECT 1"), "0A000");
        assert!(matches!(classify("SELECT 1"), Ok(Statement::Query)));
        assert!(matches!(
            classify("-- set x = 1\nSELECT 'set'"),
            Ok(Statement::Query)
        ));
        assert!(matches!(classify(" ; ;"), Ok(Statement::Empty)));
        assert!(matches!(classify("/* hi */ ;"), Ok(Statement::Empty)));
    }

    #[test]
    fn server_version_is_the_engines_postgres_release() {
        // `server_version` (a literal for `concat!`) and what `version()`
        // says must name the same release.
        let release = format!("{} ", shardlake_query::POSTGRES_VERSION);
        assert!(
            super::super::SERVER_VERSION.starts_with(&release),
            "{}",
            super::super::SERVER_VERSION
        );
    }

    #[test]
    fn statement_timeouts_read_as_postgres_does() {
        assert_eq!(statement_timeout_ms("5000"), Some(5000));
        assert_eq!(statement_timeout_ms("5s"), Some(5000));
        assert_eq!(statement_timeout_ms("2min"), Some(120_000));
        assert_eq!(statement_timeout_ms("0"), Some(0));
        assert_eq!(statement_timeout_ms("soon"), None);
    }
}
