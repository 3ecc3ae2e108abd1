//! Bearer tokens: who is calling, which namespaces they see, what they may do.
//!
//! Tokens are configured in `shardlake.toml`, in clear or (better) as their
//! SHA-256. The server keeps only digests and looks a presented token up by
//! its digest, so neither the configuration in memory nor a timing
//! difference reveals a token. With no tokens configured every caller is
//! anonymous with full rights, and [`crate::Server::bind`] refuses any
//! address but loopback.
//!
//! The [`Authenticated`] extractor works with any router state that hands
//! out the token table ([`FromRef`] to [`Authenticator`]), so this module
//! knows nothing of the server's state.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use shardlake_query::Scope;

use crate::config::{Permission, TokenConfig};
use crate::error::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`anonymous` without tokens), for logs.
    pub name: String,
    /// Namespaces the caller sees and may write.
    pub scope: Scope,
    permissions: HashSet<Permission>,
}

impl Caller {
    /// The caller of a server without tokens: everything allowed.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            scope: Scope::All,
            permissions: [Permission::Query, Permission::Ingest, Permission::Admin].into(),
        }
    }

    /// Fails with 403 unless the caller holds `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.permissions.contains(&permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` lacks the `{}` permission",
                self.name,
                match permission {
                    Permission::Query => "query",
                    Permission::Ingest => "ingest",
                    Permission::Admin => "admin",
                }
            )))
        }
    }
}

/// The configured tokens, by SHA-256 digest. Cheap to clone (the table is
/// shared).
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    by_digest: Arc<HashMap<[u8; 32], Arc<Caller>>>,
}

/// A problem in the token configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfigError(pub String);

impl std::fmt::Display for TokenConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenConfigError {}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Authenticator {
    /// Checks and indexes `tokens`: each needs a name, exactly one of
    /// `token`/`token_sha256`, at least one namespace (or `*`) and one
    /// permission; names and tokens are unique.
    pub fn new(tokens: &[TokenConfig]) -> Result<Self, TokenConfigError> {
        let mut by_digest = HashMap::new();
        let mut names = HashSet::new();
        for t in tokens {
            let err = |m: &str| TokenConfigError(format!("token `{}`: {m}", t.name));
            if t.name.is_empty() {
                return Err(TokenConfigError("a token without a name".into()));
            }
            if !names.insert(t.name.as_str()) {
                return Err(err("the name is used twice"));
            }
            let digest = match (&t.token, &t.token_sha256) {
                (Some(clear), None) if clear.len() >= 16 => digest(clear.as_bytes()),
                (Some(_), None) => return Err(err("the token is shorter than 16 characters")),
                (None, Some(hexed)) => hex::decode(hexed)
                    .ok()
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                    .ok_or_else(|| err("token_sha256 is not 64 hex digits"))?,
                _ => return Err(err("set exactly one of `token` and `token_sha256`")),
            };
            if t.permissions.is_empty() {
                return Err(err("no permissions"));
            }
            let scope = if t.namespaces.iter().any(|n| n == "*") {
                Scope::All
            } else if t.namespaces.is_empty() {
                return Err(err("no namespaces (use [\"*\"] for all)"));
            } else {
                for ns in &t.namespaces {
                    shardlake_core::validate_namespace(ns)
                        .map_err(|e| err(&format!("namespace `{ns}`: {}", e.message)))?;
                }
                Scope::Namespaces(t.namespaces.iter().cloned().collect::<BTreeSet<_>>())
            };
            let caller = Caller {
                name: t.name.clone(),
                scope,
                permissions: t.permissions.iter().copied().collect(),
            };
            if by_digest.insert(digest, Arc::new(caller)).is_some() {
                return Err(err("the same token is configured twice"));
            }
        }
        Ok(Self {
            by_digest: Arc::new(by_digest),
        })
    }

    /// Whether any token is configured (otherwise everyone is anonymous).
    pub fn is_enabled(&self) -> bool {
        !self.by_digest.is_empty()
    }

    /// The caller presenting `authorization` (the header's value).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Caller>, ApiError> {
        if !self.is_enabled() {
            return Ok(Arc::new(Caller::anonymous()));
        }
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized(
                "missing `Authorization: Bearer <token>` header",
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header is not `Bearer <token>`")
            })?;
        self.token(token)
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }

    /// The caller holding `token` (presented some other way than a header:
    /// the Postgres password), looked up by its digest.
    pub fn token(&self, token: &str) -> Option<Arc<Caller>> {
        self.by_digest.get(&digest(token.as_bytes())).cloned()
    }
}

impl Caller {
    /// Whether the caller holds `permission`.
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// The permissions the caller holds, in a fixed order.
    pub fn permissions(&self) -> Vec<Permission> {
        [Permission::Query, Permission::Ingest, Permission::Admin]
            .into_iter()
            .filter(|p| self.may(*p))
            .collect()
    }
}

/// Extracts the authenticated caller of a request (401 if there is none),
/// in any router whose state gives out the [`Authenticator`].
#[derive(Debug, Clone)]
pub struct Authenticated(pub Arc<Caller>);

impl<S> FromRequestParts<S> for Authenticated
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let caller = Authenticator::from_ref(state).authenticate(header)?;
        tracing::Span::current().record("caller", tracing::field::display(&caller.name));
        tracing::Span::current().record("scope", tracing::field::display(&caller.scope));
        Ok(Self(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, clear: &str, namespaces: &[&str], perms: &[Permission]) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            token: Some(clear.into()),
            token_sha256: None,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            permissions: perms.to_vec(),
        }
    }

    #[test]
    fn tokens_map_to_scopes_and_bad_configs_are_refused() {
        let hashed = TokenConfig {
            token: None,
            token_sha256: Some(hex::encode(digest(b"0123456789abcdef-admin"))),
            ..token("ops", "", &["*"], &[Permission::Admin])
        };
        let auth = Authenticator::new(&[
            token(
                "acme",
                "0123456789abcdef-acme",
                &["acme"],
                &[Permission::Query],
            ),
            hashed,
        ])
        .expect("valid");
        let acme = auth
            .authenticate(Some("Bearer 0123456789abcdef-acme"))
            .expect("known");
        assert_eq!(acme.scope, Scope::namespaces(["acme"]));
        assert!(acme.require(Permission::Query).is_ok());
        assert_eq!(
            acme.require(Permission::Ingest)
                .expect_err("no ingest")
                .status(),
            403
        );
        let ops = auth
            .authenticate(Some("Bearer 0123456789abcdef-admin"))
            .expect("hashed token");
        assert_eq!(ops.scope, Scope::All);
        for bad in [
            None,
            Some("Bearer nope-nope-nope-nope"),
            Some("Basic abc"),
            Some("Bearer "),
        ] {
            assert_eq!(auth.authenticate(bad).expect_err("refused").status(), 401);
        }

        for bad in [
            vec![token("a", "short", &["x"], &[Permission::Query])],
            vec![token("a", "0123456789abcdef", &[], &[Permission::Query])],
            vec![token("a", "0123456789abcdef", &["x"], &[])],
            vec![token(
                "a",
                "0123456789abcdef",
                &["bad ns!"],
                &[Permission::Query],
            )],
            vec![
                token("a", "0123456789abcdef", &["x"], &[Permission::Query]),
                token("a", "0123456789abcdefg", &["x"], &[Permission::Query]),
            ],
            vec![
                token("a", "0123456789abcdef", &["x"], &[Permission::Query]),
                token("b", "0123456789abcdef", &["y"], &[Permission::Query]),
            ],
        ] {
            assert!(Authenticator::new(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn without_tokens_everyone_is_anonymous_with_every_right() {
        let auth = Authenticator::new(&[]).expect("empty");
        let caller = auth.authenticate(None).expect("anonymous");
        assert_eq!(caller.scope, Scope::All);
        assert!(caller.require(Permission::Admin).is_ok());
    }
}
