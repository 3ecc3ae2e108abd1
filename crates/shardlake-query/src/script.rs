//! SQL scripts: text holding several statements separated by `;`, as a
//! file, stdin or a REPL gives them. The engine runs one statement per
//! query; a script is split by the SQL parser (so a `;` inside a string or
//! a comment splits nothing) and run statement by statement.

use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::error::{Error, Result};

/// The statements of `sql`, each as the parser prints it.
pub fn split_statements(sql: &str) -> Result<Vec<String>> {
    let statements =
        DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(Error::from)?;
    Ok(statements.iter().map(ToString::to_string).collect())
}

/// Whether `sql` ends a statement: its last token (comments and blanks
/// aside) is a `;` outside any string. A REPL reads lines until it does.
pub fn is_complete(sql: &str) -> bool {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        // An unterminated string or comment: more lines are coming.
        return false;
    };
    tokens
        .iter()
        .rev()
        .find(|t| {
            !matches!(
                t,
                Token::Whitespace(
                    Whitespace::Space
                        | Whitespace::Newline
                        | Whitespace::Tab
                        | Whitespace::SingleLineComment { .. }
                        | Whitespace::MultiLineComment(_)
                )
            )
        })
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
