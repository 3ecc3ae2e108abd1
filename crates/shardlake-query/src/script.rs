//! SQL scripts: text holding several statements separated by `;`, as a
//! file, stdin or a REPL gives them. The engine runs one statement per
//! query; a script is cut at the `;` tokens the SQL tokenizer finds (so a
//! `;` inside a string or a comment cuts nothing) and run statement by
//! statement, each exactly as the user wrote it.

use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::error::{Error, Result};

/// The statements of `sql`, in order, each the user's own text. The whole
/// script is parsed first, so a syntax error anywhere fails it before any
/// statement runs.
pub fn split_statements(sql: &str) -> Result<Vec<String>> {
    DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(Error::from)?;
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| Error::new(crate::ErrorKind::InvalidQuery, e.to_string()))?;
    // Byte offset of each line's start, to turn (line, column) into bytes.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> usize {
        let start = line_starts
            .get((line as usize).saturating_sub(1))
            .copied()
            .unwrap_or(sql.len());
        let rest = &sql[start..];
        start
            + rest
                .char_indices()
                .nth((column as usize).saturating_sub(1))
                .map_or(rest.len(), |(i, _)| i)
    };
    // Each statement runs from its first token to its last one that is not
    // a blank or a comment (comments around it are not part of it).
    let mut statements = Vec::new();
    let mut span: Option<(usize, usize)> = None;
    for token in &tokens {
        match &token.token {
            Token::SemiColon => {
                if let Some((start, end)) = span.take() {
                    statements.push(sql[start..end].to_owned());
                }
            }
            t if is_blank(t) => {}
            _ => {
                let start = offset(token.span.start.line, token.span.start.column);
                let end = offset(token.span.end.line, token.span.end.column);
                span = Some((span.map_or(start, |(s, _)| s), end));
            }
        }
    }
    if let Some((start, end)) = span {
        statements.push(sql[start..end].to_owned());
    }
    Ok(statements)
}

/// Whitespace and comments.
fn is_blank(token: &Token) -> bool {
    matches!(
        token,
        Token::Whitespace(
            Whitespace::Space
                | Whitespace::Newline
                | Whitespace::Tab
                | Whitespace::SingleLineComment { .. }
                | Whitespace::MultiLineComment(_)
        )
    )
}

/// Whether `sql` ends a statement: its last token (comments and blanks
/// aside) is a `;` outside any string. A REPL reads lines until it does.
pub fn is_complete(sql: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        // An unterminated string or comment: more lines are coming.
        return false;
    };
    tokens
        .iter()
        .rev()
        .find(|t| !is_blank(t))
        .is_some_and(|t| *t == Token::SemiColon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_splits_at_semicolons_outside_strings() {
        let parts =
            split_statements("SELECT 1; SELECT 'a;b' AS s -- c;\n; SELECT 2").expect("parses");
        assert_eq!(parts, ["SELECT 1", "SELECT 'a;b' AS s", "SELECT 2"]);
        // The user's own text, across lines and multi-byte characters.
        let parts =
            split_statements("/* lead */ SELECT 'é;x'\n  ,   2 ;\nselect 3").expect("parses");
        assert_eq!(parts, ["SELECT 'é;x'\n  ,   2", "select 3"]);
        assert!(split_statements("SELEC 1").is_err());
        assert!(split_statements("").expect("empty").is_empty());
    }

    #[test]
    fn a_statement_is_complete_at_its_semicolon() {
        assert!(is_complete("SELECT 1;"));
        assert!(is_complete("SELECT 1; -- done\n"));
        assert!(!is_complete("SELECT 1"));
        assert!(!is_complete("SELECT ';"));
        assert!(!is_complete("SELECT 1 /* ; */"));
    }
}
