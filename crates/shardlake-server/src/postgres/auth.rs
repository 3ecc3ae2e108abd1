//! Startup and authentication: the password is a shardlake token, checked
//! by its SHA-256 digest like the HTTP `Authorization` header, and the
//! token's scope and permissions are the connection's. The user name is
//! informational (logs, `SHOW`); the token says who the caller is.
//!
//! Tokens are kept only as digests, so the password travels in clear
//! (`AuthenticationCleartextPassword`): MD5 and SCRAM need the secret
//! itself on the server. Without TLS that is only safe on loopback or a
//! trusted network, which is also where a server without tokens may
//! listen (checked when it binds).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::cancel::Cancels;
use super::cursor::Cursors;
use super::{SERVER_VERSION, Session};
use crate::auth::{Authenticator, Caller};
use crate::config::Permission;

/// The startup handler shared by all connections.
pub(super) struct TokenStartup {
    auth: Authenticator,
    parameters: DefaultServerParameterProvider,
    pids: RandomPidSecretKeyGenerator,
    cancels: Arc<Cancels>,
}

impl TokenStartup {
    pub(super) fn new(auth: Authenticator, cancels: Arc<Cancels>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_owned();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        parameters.time_zone = "UTC".to_owned();
        Self {
            auth,
            parameters,
            pids: RandomPidSecretKeyGenerator::default(),
            cancels,
        }
    }

    /// Lets `caller` in: a cancel key, the session, the server's
    /// parameters and ReadyForQuery.
    async fn admit<C>(&self, client: &mut C, caller: Arc<Caller>) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = self.pids.generate(&*client);
        client.set_pid_and_secret_key(pid, secret.clone());
        tracing::debug!(caller = %caller.name, pid, "postgres connection authenticated");
        client.session_extensions().insert(Session {
            caller,
            cancel: self.cancels.register(pid, &secret),
            cursors: Cursors::default(),
        });
        finish_authentication(client, &self.parameters).await
    }
}

/// A startup error that ends the connection.
fn fatal(sqlstate: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        sqlstate.to_owned(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if !self.auth.is_enabled() {
                    // No tokens: everyone is anonymous, as over HTTP, and
                    // the listener is on loopback (checked at bind).
                    return self.admit(client, Arc::new(Caller::anonymous())).await;
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                match self.auth.token(&password.password) {
                    Some(caller) if caller.may(Permission::Query) => {
                        self.admit(client, caller).await?;
                    }
                    Some(caller) => {
                        return Err(fatal(
                            "42501",
                            format!("token `{}` lacks the `query` permission", caller.name),
                        ));
                    }
                    // 28P01, and the connection closes.
                    None => return Err(PgWireError::InvalidPassword(user)),
                }
            }
            _ => {}
        }
        Ok(())
    }
}
