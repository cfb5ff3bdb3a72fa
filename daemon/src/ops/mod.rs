//! Operations: argument decoding, authorization, audit and counting around each op family.
//! Handlers never know which backend holds a key.

mod admin;
mod basic;
mod decrypt;
mod envelope;
mod keyuse;
mod public;
mod rewrap;
mod sign;

use std::sync::Arc;
use std::time::Instant;

use ciborium::Value;
use custody_proto::ops::names;
use custody_proto::{ErrorCode, Request, Response, WireError};
use serde::Serialize;

use crate::audit::Record;
use crate::auth::Peer;
use crate::error::OpError;
use crate::state::App;

/// Per-request context: who asks, and what the audit line will say.
pub struct Ctx {
    /// Shared state.
    pub app: Arc<App>,
    /// The caller.
    pub peer: Peer,
    /// Op name.
    pub op: &'static str,
    /// Role that allowed the op.
    pub role: Option<String>,
    /// Key named by the op.
    pub key: Option<String>,
    /// Key version used.
    pub version: Option<u32>,
    /// A second key the op touched (`rewrap` target, `keys.create` master).
    pub target: Option<String>,
}

impl Ctx {
    /// Checks that the caller may run this op on `key` (None: an op without a key); records
    /// the key and role for the audit line.
    pub fn authorize(&mut self, key: Option<&str>) -> Result<(), OpError> {
        self.authorize_as(self.op, key)
    }

    /// Like [`Ctx::authorize`] but checks another op name (e.g. `rewrap.external`, a stronger
    /// right than `rewrap`). The first key checked is the audit line's `key`, a second one its
    /// `target`.
    pub fn authorize_as(&mut self, op: &str, key: Option<&str>) -> Result<(), OpError> {
        if self.key.is_none() {
            self.key = key.map(str::to_owned);
        } else if self.target.is_none() && key != self.key.as_deref() {
            self.target = key.map(str::to_owned);
        }
        let policy = self.app.policy();
        let role = policy.check(&self.peer, op, key)?;
        if self.role.is_none() {
            self.role = Some(role.to_owned());
        }
        Ok(())
    }

    /// Runs blocking work (backends, registry) on a worker thread, bounded by the op timeout.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, OpError>
    where
        F: FnOnce(&App) -> Result<T, OpError> + Send + 'static,
        T: Send + 'static,
    {
        let limit = self.app.config.server.op_timeout();
        self.blocking_within(limit, f).await
    }

    /// Like [`Ctx::blocking`] for operations that generate keys (`keys.create`, `keys.rotate`):
    /// bounded by [`crate::backend::KEYGEN_TIMEOUT`] if that is longer than the op timeout.
    pub async fn blocking_keygen<T, F>(&self, f: F) -> Result<T, OpError>
    where
        F: FnOnce(&App) -> Result<T, OpError> + Send + 'static,
        T: Send + 'static,
    {
        let limit = self
            .app
            .config
            .server
            .op_timeout()
            .max(crate::backend::KEYGEN_TIMEOUT);
        self.blocking_within(limit, f).await
    }

    async fn blocking_within<T, F>(&self, limit: std::time::Duration, f: F) -> Result<T, OpError>
    where
        F: FnOnce(&App) -> Result<T, OpError> + Send + 'static,
        T: Send + 'static,
    {
        let app = self.app.clone();
        let task = tokio::task::spawn_blocking(move || f(&app));
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(OpError::internal(format!("operation failed: {e}"))),
            Err(_) => Err(OpError::new(
                ErrorCode::BackendUnavailable,
                format!("operation did not finish within {}s", limit.as_secs()),
            )),
        }
    }
}

/// Encodes a typed result.
pub fn encode<T: Serialize>(v: &T) -> Result<Value, OpError> {
    custody_proto::message::to_value(v).map_err(OpError::from)
}

type OpResult = Result<Value, OpError>;

/// The result of an op that returns a plaintext (`decrypt`, `unwrap`, `envelope.open`); records the
/// version for the audit line.
pub fn plaintext_result(ctx: &mut Ctx, key: String, version: u32, plaintext: &[u8]) -> OpResult {
    ctx.version = Some(version);
    encode(&custody_proto::ops::PlaintextResult {
        key,
        version,
        plaintext: plaintext.to_vec(),
    })
}

/// Runs one request: decode, authorize, execute, audit, count.
pub async fn dispatch(app: &Arc<App>, peer: &Peer, req: Request) -> Response {
    let start = Instant::now();
    let op = names::ALL.iter().copied().find(|n| *n == req.op);
    let Some(op) = op else {
        app.stats.count(&req.op, false);
        let shown: String = req
            .op
            .chars()
            .take(64)
            .collect::<String>()
            .escape_default()
            .to_string();
        let policy = app.policy();
        let roles = policy.roles_of(peer);
        app.audit.write(&Record::new(
            peer,
            roles.first().copied(),
            &shown,
            None,
            None,
            ErrorCode::UnknownOp.as_str(),
            start.elapsed(),
        ));
        return Response::err(
            req.id,
            WireError::new(ErrorCode::UnknownOp, format!("unknown op `{shown}`")),
        );
    };
    let mut ctx = Ctx {
        app: app.clone(),
        peer: peer.clone(),
        op,
        role: None,
        key: None,
        version: None,
        target: None,
    };
    let result: OpResult = match op {
        names::PING => basic::ping(&mut ctx, &req).await,
        names::STATUS => basic::status(&mut ctx, &req).await,
        names::KEYS_CREATE => admin::create(&mut ctx, &req).await,
        names::KEYS_LIST => admin::list(&mut ctx, &req).await,
        names::KEYS_SHOW => admin::show(&mut ctx, &req).await,
        names::KEYS_ROTATE => admin::rotate(&mut ctx, &req).await,
        names::KEYS_RETIRE => admin::retire(&mut ctx, &req).await,
        names::KEYS_DESTROY => admin::destroy(&mut ctx, &req).await,
        names::KEYS_PUBLIC => public::public(&mut ctx, &req).await,
        names::SIGN => sign::sign(&mut ctx, &req).await,
        names::SIGN_BATCH => sign::sign_batch(&mut ctx, &req).await,
        names::SIGN_JWT => sign::sign_jwt(&mut ctx, &req).await,
        names::DECRYPT => decrypt::decrypt(&mut ctx, &req).await,
        names::UNWRAP => decrypt::unwrap(&mut ctx, &req).await,
        names::ENVELOPE_SEAL => envelope::seal(&mut ctx, &req).await,
        names::ENVELOPE_OPEN => envelope::open(&mut ctx, &req).await,
        names::REWRAP => rewrap::rewrap(&mut ctx, &req).await,
        _ => Err(OpError::new(
            ErrorCode::UnknownOp,
            format!("unknown op `{op}`"),
        )),
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    app.stats.count(op, result.is_ok());
    let mut record = Record::new(
        peer,
        ctx.role.as_deref(),
        op,
        ctx.key.as_deref(),
        ctx.version,
        outcome,
        start.elapsed(),
    );
    record.target = ctx.target.as_deref();
    app.audit.write(&record);
    match result {
        Ok(v) => Response {
            id: req.id,
            result: Ok(v),
        },
        Err(e) => Response::err(req.id, e.into()),
    }
}
