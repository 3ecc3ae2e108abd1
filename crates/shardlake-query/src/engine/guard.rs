//! The read-only SQL guard: which SQL may run here. A statement is checked
//! by kind when the query is prepared (its normalized form is also the
//! result cache's key, memoized per SQL text), and its logical plan again by
//! DataFusion's own `SQLOptions` when it is planned.

use std::sync::Arc;

use datafusion::config::Dialect;
use datafusion::prelude::SQLOptions;
use datafusion::sql::parser::Statement;

use super::{CrossShardQuery, SqlDialect};
use crate::error::{Error, ErrorKind, Result};

/// The longest SQL text whose normalized form is memoized.
const MEMOIZED_SQL_BYTES: usize = 16 * 1024;

impl CrossShardQuery {
    /// `sql` in normalized form, checked to be read-only (memoized).
    ///
    /// Each dialect has its own memo; a query of another dialect than the
    /// engine's own is prefixed with the dialect's name in its normalized
    /// form (the result cache's key).
    pub(super) fn normalize(&self, sql: &str, dialect: SqlDialect) -> Result<Arc<str>> {
        let memo = &self.inner.normalized[dialect.memo()];
        if let Some(known) = memo.get(sql) {
            return Ok(known);
        }
        let statement = match dialect {
            SqlDialect::DataFusion => self.inner.base.sql_to_statement(sql, &Dialect::Generic)?,
            SqlDialect::Postgres => super::dialect::parse_postgres(sql)?,
        };
        let normalized: Arc<str> = format!(
            "{}{}",
            dialect.key_prefix(),
            normalize_read_only(statement)?
        )
        .into();
        // Entries are counted, not weighed: only texts of a sane size are
        // kept (a generated 10 MB IN-list is parsed each time instead).
        if sql.len() <= MEMOIZED_SQL_BYTES {
            memo.insert(sql.to_owned(), Arc::clone(&normalized));
        }
        Ok(normalized)
    }
}

/// Allows queries only: SELECT, EXPLAIN (of a query), SHOW and DESCRIBE.
/// Everything that defines, changes or reads anything but the lake's
/// tables (DDL, DML, COPY, SET, CREATE EXTERNAL TABLE) is refused before
/// planning, and planning re-checks with DataFusion's own `SQLOptions`.
///
/// Returns the statement in canonical form (the result cache's key):
/// keywords and whitespace as the parser prints them, and unquoted
/// identifiers and function names in lower case, which is how DataFusion
/// resolves them anyway.
fn normalize_read_only(mut statement: Statement) -> Result<String> {
    let allowed = match &statement {
        Statement::Statement(s) => {
            use datafusion::sql::sqlparser::ast::Statement as S;
            match s.as_ref() {
                S::Query(_)
                | S::ShowTables { .. }
                | S::ShowColumns { .. }
                | S::ExplainTable { .. } => true,
                S::Explain { statement, .. } => matches!(statement.as_ref(), S::Query(_)),
                _ => false,
            }
        }
        Statement::Explain(explain) => matches!(
            explain.statement.as_ref(),
            Statement::Statement(s) if matches!(s.as_ref(), datafusion::sql::sqlparser::ast::Statement::Query(_))
        ),
        _ => false,
    };
    if !allowed {
        let kind = statement.to_string();
        let first = kind
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        return Err(Error::new(
            ErrorKind::NotAllowed,
            format!("only queries can run here; `{first} ...` is not allowed"),
        ));
    }
    if let Statement::Statement(s) = &mut statement {
        lowercase_identifiers(s.as_mut());
    }
    Ok(statement.to_string())
}

fn lowercase_identifiers(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::{
        Expr, Ident, ObjectNamePart, visit_expressions_mut, visit_relations_mut,
    };
    fn lower(ident: &mut Ident) {
        if ident.quote_style.is_none() {
            ident.value = ident.value.to_lowercase();
        }
    }
    fn lower_parts(parts: &mut [ObjectNamePart]) {
        for part in parts {
            if let ObjectNamePart::Identifier(ident) = part {
                lower(ident);
            }
        }
    }
    let _ = visit_expressions_mut(statement, |expr| {
        match expr {
            Expr::Identifier(ident) => lower(ident),
            Expr::CompoundIdentifier(idents) => idents.iter_mut().for_each(lower),
            Expr::Function(f) => lower_parts(&mut f.name.0),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_relations_mut(statement, |name| {
        lower_parts(&mut name.0);
        ControlFlow::<()>::Continue(())
    });
}

pub(super) fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}
