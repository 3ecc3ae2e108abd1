//! Who is asking: the namespaces a caller may see.

use std::collections::BTreeSet;
use std::fmt;

/// The namespaces a query may read. Enforced inside the table scan (files
/// pruned, rows filtered), so it holds for every SQL shape, and part of the
/// result cache key, so a cached answer never crosses scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// Every namespace.
    #[default]
    All,
    /// Only these namespaces.
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// A scope limited to `namespaces`.
    pub fn namespaces<I, S>(namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Scope::Namespaces(namespaces.into_iter().map(Into::into).collect())
    }

    /// Whether rows of `namespace` are visible.
    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(set) => set.contains(namespace),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("*"),
            Scope::Namespaces(set) => {
                let list: Vec<&str> = set.iter().map(String::as_str).collect();
                write!(f, "[{}]", list.join(","))
            }
        }
    }
}
