//! Routing keys, including composite ones.

use std::fmt;

/// Separator between the parts of a composite key: the ASCII unit
/// separator, which does not occur in identifiers, so `("a:b", "c")` and
/// `("a", "b:c")` never produce the same key.
pub const COMPOSITE_SEPARATOR: char = '\u{1f}';

/// A key to route: one string, or several parts joined deterministically.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutingKey(String);

impl RoutingKey {
    /// A single-part key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// A composite key: `parts` in the given order, joined by
    /// [`COMPOSITE_SEPARATOR`].
    pub fn composite<I, S>(parts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut key = String::new();
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                key.push(COMPOSITE_SEPARATOR);
            }
            key.push_str(part.as_ref());
        }
        Self(key)
    }

    /// The key as routed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Show composite keys readably.
        f.write_str(&self.0.replace(COMPOSITE_SEPARATOR, "|"))
    }
}

impl From<&str> for RoutingKey {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}
