//! SQL dialects. The engine speaks DataFusion's SQL (what HTTP, the CLI and
//! the Rust API send). Postgres clients (psql, JDBC, BI tools, through the
//! server's Postgres listener) speak Postgres's, and on connect they ask
//! `pg_catalog` and `information_schema` which tables and columns there are.
//!
//! A query in the Postgres dialect is parsed by datafusion-pg-catalog's
//! `PostgresCompatibilityParser` (the Postgres grammar, plus rewrites of what
//! psql and drivers send and DataFusion does not plan: `OPERATOR(pg_catalog.~)`,
//! `::regclass`, `COLLATE`, ...) and planned in a session of its own: the
//! engine's session with a second catalog in which the same `events` and
//! `things` sit next to `pg_catalog`'s tables and functions. HTTP's catalog
//! stays as it is (its `SHOW TABLES` does not list seventy `pg_*` tables).
//! Everything else is the engine's: snapshot pin, scope, read-only guard,
//! result cache, limits.

use std::sync::{Arc, LazyLock};

use arrow::array::BooleanArray;
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider,
};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::error::{Error, ErrorKind, Result};

/// The Postgres release whose protocol and catalog shardlake speaks (what
/// `server_version` and `version()` say).
pub const POSTGRES_VERSION: &str = "16.6";

/// The SQL a query is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SqlDialect {
    /// DataFusion's SQL, over `events` and `things`.
    #[default]
    DataFusion,
    /// Postgres's SQL as clients send it, over `events`, `things`,
    /// `pg_catalog` and `information_schema`.
    Postgres,
}

impl SqlDialect {
    /// Which of the engine's per-dialect memos is this dialect's.
    pub(super) fn memo(self) -> usize {
        match self {
            SqlDialect::DataFusion => 0,
            SqlDialect::Postgres => 1,
        }
    }

    /// What sets a normalized query of this dialect apart in the result
    /// cache's key: the same text may mean something else once Postgres's
    /// rewrites and functions apply. (A normalized statement starts with a
    /// keyword, never with this prefix.)
    pub(super) fn key_prefix(self) -> &'static str {
        match self {
            SqlDialect::DataFusion => "",
            SqlDialect::Postgres => "postgres\n",
        }
    }
}

/// The parser, built once: it compiles its token rewrites when made.
static POSTGRES: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// Parses `sql`, one statement in Postgres's dialect, with the rewrites
/// that let DataFusion plan what Postgres clients send.
///
/// What Postgres's grammar does not know but DataFusion's does (`CREATE
/// EXTERNAL TABLE`, DataFusion's `EXPLAIN` forms) is read by DataFusion's
/// parser under the same dialect, so a statement that may not run is
/// refused as such rather than as bad syntax, and DataFusion's own SQL
/// keeps working.
pub(super) fn parse_postgres(sql: &str) -> Result<Statement> {
    let mut statements = match POSTGRES.parse(sql) {
        Ok(statements) => statements
            .into_iter()
            .map(|s| Statement::Statement(Box::new(s)))
            .collect(),
        Err(postgres) => DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
            .map(Vec::from)
            .map_err(|_| Error::new(ErrorKind::InvalidQuery, format!("SQL error: {postgres}")))?,
    };
    match statements.len() {
        1 => Ok(statements.remove(0)),
        0 => Err(Error::new(ErrorKind::InvalidQuery, "no statement to run")),
        n => Err(Error::new(
            ErrorKind::InvalidQuery,
            format!("send one statement at a time: this text holds {n}"),
        )),
    }
}

/// The session template of the Postgres dialect: `base` (its rules,
/// functions, configuration and runtime) with a catalog of its own holding
/// `tables` and `pg_catalog`.
pub(super) fn postgres_template(
    base: &SessionState,
    tables: &[(&str, Arc<dyn datafusion::catalog::TableProvider>)],
) -> Result<SessionState> {
    let options = base.config().options();
    let catalog_name = options.catalog.default_catalog.clone();
    let schema = Arc::new(MemorySchemaProvider::new());
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog.register_schema(&options.catalog.default_schema, schema)?;
    let catalogs = Arc::new(MemoryCatalogProviderList::new());
    catalogs.register_catalog(catalog_name.clone(), catalog);
    let state = SessionStateBuilder::new_from_existing(base.clone())
        .with_catalog_list(catalogs)
        .build();
    let ctx = SessionContext::new_with_state(state);
    for (name, table) in tables {
        ctx.register_table(*name, Arc::clone(table))?;
    }
    datafusion_pg_catalog::setup_pg_catalog(&ctx, &catalog_name, EmptyContextProvider)
        .map_err(|e| Error::from(*e))?;
    // What psql's `\df` and `\dT` ask besides (everything is visible:
    // there is one schema), and a `version()` in the form drivers parse.
    ctx.register_udf(always_visible("pg_function_is_visible"));
    ctx.register_udf(always_visible("pg_type_is_visible"));
    ctx.register_udf(version());
    Ok(ctx.state())
}

/// `name(oid) -> true`.
fn always_visible(name: &str) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            Ok(match &args[0] {
                ColumnarValue::Scalar(_) => ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))),
                ColumnarValue::Array(oids) => {
                    ColumnarValue::Array(Arc::new(BooleanArray::from(vec![true; oids.len()])))
                }
            })
        }),
    )
}

/// `version()` as Postgres words it (`PostgreSQL 16.6 ...`): JDBC, DBeaver
/// and pgcli read the major version from it.
fn version() -> ScalarUDF {
    let text = format!(
        "PostgreSQL {POSTGRES_VERSION} (shardlake {}, Apache DataFusion {}), 64-bit",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
    );
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(text.clone()))))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_describe_parses_and_is_rewritten() {
        // What psql 15 sends for `\d events` first.
        let sql = "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
                   LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                   WHERE c.relname OPERATOR(pg_catalog.~) '^(events)$' COLLATE pg_catalog.default \
                   AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;";
        let statement = parse_postgres(sql).expect("parses");
        let text = statement.to_string();
        assert!(!text.contains("OPERATOR"), "{text}");
        assert!(!text.contains("COLLATE"), "{text}");
    }

    #[test]
    fn version_reads_as_postgres() {
        let udf = version();
        let value = udf
            .invoke_with_args(datafusion::logical_expr::ScalarFunctionArgs {
                args: vec![],
                arg_fields: vec![],
                number_rows: 1,
                return_field: Arc::new(arrow::datatypes::Field::new("v", DataType::Utf8, true)),
                config_options: Arc::default(),
            })
            .expect("runs");
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(text))) = value else {
            panic!("not a string: {value:?}");
        };
        assert!(text.starts_with("PostgreSQL 16.6 (shardlake "), "{text}");
    }

    #[test]
    fn datafusion_statements_are_read_too() {
        let statement = parse_postgres("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/tmp/x'")
            .expect("DataFusion's grammar");
        assert!(
            matches!(statement, Statement::CreateExternalTable(_)),
            "{statement}"
        );
        let e = parse_postgres("SELEC 1").expect_err("bad syntax");
        assert_eq!(e.kind(), ErrorKind::InvalidQuery);
    }

    #[test]
    fn several_statements_are_refused() {
        let e = parse_postgres("SELECT 1; SELECT 2").expect_err("two statements");
        assert_eq!(e.kind(), ErrorKind::InvalidQuery);
        assert!(e.to_string().contains("one statement"), "{e}");
    }
}
