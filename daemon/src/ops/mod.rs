//! Operations: one file per op family, each op a [`Handle`] impl for the op type declared in
//! proto. Dispatch (generated from proto's op list) decodes the arguments, authorizes the rights
//! the op declares, runs the handler, audits and counts. Handlers never know which backend holds
//! a key.

mod admin;
mod backup;
mod basic;
mod boxes;
mod certs;
mod decrypt;
mod envelope;
mod keyuse;
mod public;
mod rewrap;
mod sign;
mod tpm;
mod zk;

use std::sync::Arc;
use std::time::Instant;

use ciborium::Value;
use custody_proto::ops::{Op, PlaintextResult};
use custody_proto::{ErrorCode, Request, Response, WireError};
use zeroize::Zeroize;

use crate::audit::Record;
use crate::auth::Peer;
use crate::error::OpError;
use crate::sched::Refused;
use crate::stages::{self, Stage};
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
    /// Checks that the caller has `right` on `key` (None: an op without a key); records the key
    /// and role for the audit line. The first key checked is the audit line's `key`, a second one
    /// its `target`. Only [`run`] calls this, from the op's declared rights, before the handler.
    fn authorize(&mut self, right: &str, key: Option<&str>) -> Result<(), OpError> {
        if self.key.is_none() {
            self.key = key.map(str::to_owned);
        } else if self.target.is_none() && key != self.key.as_deref() {
            self.target = key.map(str::to_owned);
        }
        let policy = self.app.policy();
        let role = policy.check(&self.peer, right, key)?;
        if self.role.is_none() {
            self.role = Some(role.to_owned());
        }
        Ok(())
    }

    /// Runs blocking work (backends, registry) on a scheduler worker thread ([`crate::sched`]:
    /// queued per uid, served in turn); work that has not started within the op timeout is
    /// answered `backend_unavailable` without running.
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
        let timed_out = || {
            OpError::new(
                ErrorCode::BackendUnavailable,
                format!("operation did not finish within {}s", limit.as_secs()),
            )
        };
        let deadline = Instant::now() + limit;
        // Nothing waits and a slot is free: run here, on this runtime thread (the runtime moves
        // its other tasks to another thread meanwhile), instead of waking a worker and being
        // woken by it.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            if let Some(slot) = self.app.sched.try_inline() {
                let app = &self.app;
                let r = tokio::task::block_in_place(|| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::backend::deadline::with(deadline, || f(app))
                    }))
                });
                drop(slot);
                return r.unwrap_or_else(|_| {
                    Err(OpError::internal("operation failed: the job panicked"))
                });
            }
        }
        let app = self.app.clone();
        let queued = stages::start();
        let rx = self
            .app
            .sched
            .submit(self.peer.uid, deadline, move || {
                stages::end(Stage::QueueHop, queued);
                let r = f(&app);
                (r, stages::start())
            })
            .map_err(|e| match e {
                Refused::Full => OpError::new(
                    ErrorCode::Busy,
                    "too many requests waiting for the backends; retry later",
                ),
                Refused::Expired => timed_out(),
                Refused::Closed => {
                    OpError::new(ErrorCode::BackendUnavailable, "the daemon is shutting down")
                }
            })?;
        // A job that started in time runs to its end (its device calls are bounded by the
        // deadline); the extra `limit` only covers a device call that hangs.
        match tokio::time::timeout(limit * 2, rx).await {
            Ok(Ok(Ok((r, done)))) => {
                stages::end(Stage::ReturnHop, done);
                r
            }
            Ok(Ok(Err(_))) | Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(OpError::internal("operation failed: worker job panicked")),
        }
    }
}

/// Starts making the share segments of every zero-knowledge pool in the background (at start).
pub fn warm_pools(app: &Arc<App>) {
    zk::warm_all(app);
}

/// An operation's handler: runs after the request's arguments decoded and every right the op
/// declares ([`Op::access`]) was granted, so a handler cannot forget authorization.
pub(crate) trait Handle: Op {
    /// Executes the op.
    async fn handle(ctx: &mut Ctx, args: Self::Args) -> Result<Self::Result, OpError>;

    /// Zeroizes the secret parts of a result once it is encoded (ops that return plaintexts).
    fn scrub(_result: &mut Self::Result) {}
}

type OpResult = Result<Value, OpError>;

/// Decodes the arguments of `O`, authorizes every right it declares, runs its handler, encodes
/// the result.
async fn run<O: Handle>(ctx: &mut Ctx, mut req: Request) -> OpResult {
    let t = stages::start();
    let args = req.args::<O::Args>();
    // The request's bytes (an envelope.seal plaintext) are not needed once decoded.
    scrub_value(&mut req.args);
    let args = args?;
    for a in O::access(&args)? {
        ctx.authorize(a.right, a.key)?;
    }
    stages::end(Stage::ArgsAuthorize, t);
    let mut result = O::handle(ctx, args).await?;
    let t = stages::start();
    let value = custody_proto::message::to_value(&result).map_err(OpError::from);
    O::scrub(&mut result);
    stages::end(Stage::ResultEncode, t);
    value
}

/// Zeroizes every byte and text string of a CBOR value in place (requests once decoded,
/// responses once written).
pub fn scrub_value(v: &mut Value) {
    match v {
        Value::Bytes(b) => b.zeroize(),
        Value::Text(t) => t.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(scrub_value),
        Value::Map(m) => m.iter_mut().for_each(|(k, v)| {
            scrub_value(k);
            scrub_value(v);
        }),
        Value::Tag(_, inner) => scrub_value(inner),
        _ => {}
    }
}

/// The result of an op that returns a plaintext (`decrypt`, `unwrap`, `envelope.open`); records the
/// version for the audit line.
pub fn plaintext_result(
    ctx: &mut Ctx,
    key: String,
    version: u32,
    plaintext: &[u8],
) -> Result<PlaintextResult, OpError> {
    ctx.version = Some(version);
    Ok(PlaintextResult {
        key,
        version,
        plaintext: plaintext.to_vec(),
    })
}

/// The dispatch table, generated from the op list in proto: every op there must have a
/// [`Handle`] impl or this does not compile.
macro_rules! dispatch_table {
    ($( ($ty:ident, $method:ident, $cname:ident, $name:literal, $args:ty, $res:ty,
         |$a:ident| $access:expr); )*) => {
        /// Every op this daemon dispatches (all of `names::ALL` but `hello`).
        pub const DISPATCHED: &[&str] = &[$($name),*];

        async fn run_op(op: &'static str, ctx: &mut Ctx, req: Request) -> OpResult {
            match op {
                $( $name => run::<custody_proto::ops::$ty>(ctx, req).await, )*
                _ => Err(OpError::new(ErrorCode::UnknownOp, format!("unknown op `{op}`"))),
            }
        }
    };
}

custody_proto::for_each_op!(dispatch_table);

/// Runs one request: decode, authorize, execute, audit, count.
pub async fn dispatch(app: &Arc<App>, peer: &Peer, req: Request) -> Response {
    let start = Instant::now();
    let t = stages::start();
    let id = req.id;
    let op = DISPATCHED.iter().copied().find(|n| *n == req.op);
    let Some(op) = op else {
        app.stats.count(&req.op, false);
        let shown: String = req
            .op
            .chars()
            .take(64)
            .collect::<String>()
            .escape_default()
            .to_string();
        // No role allowed anything: the line names none.
        let audited = app.audit(&Record::new(
            peer,
            None,
            &shown,
            None,
            None,
            ErrorCode::UnknownOp.as_str(),
            start.elapsed(),
        ));
        if let Some(refused) = audit_refusal(app, req.id, audited) {
            return refused;
        }
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
    let result = run_op(op, &mut ctx, req).await;
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
    let ta = stages::start();
    let audited = app.audit(&record);
    stages::end(Stage::Audit, ta);
    stages::end(Stage::Dispatch, t);
    if let Some(refused) = audit_refusal(app, id, audited) {
        if let Ok(mut v) = result {
            scrub_value(&mut v);
        }
        return refused;
    }
    match result {
        Ok(v) => Response { id, result: Ok(v) },
        Err(e) => Response::err(id, e.into()),
    }
}

/// With `audit.required`, an op whose audit line could not be written is answered `internal`
/// ("audit unavailable") instead of its result.
fn audit_refusal(app: &App, id: u64, audited: Result<(), String>) -> Option<Response> {
    let e = audited.err()?;
    tracing::error!("audit line not written: {e}");
    app.config.audit.required.then(|| {
        Response::err(
            id,
            WireError::new(
                ErrorCode::Internal,
                "audit unavailable: the op was not answered",
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_dispatched() {
        for name in custody_proto::ops::names::ALL {
            // `hello` is answered by the connection before dispatch.
            if *name != custody_proto::ops::names::HELLO {
                assert!(DISPATCHED.contains(name), "op `{name}` is not dispatched");
            }
        }
        assert_eq!(DISPATCHED.len() + 1, custody_proto::ops::names::ALL.len());
    }

    /// Every op, sent by a uid with no role with well-formed arguments, is refused with
    /// `permission_denied` before its handler runs, and audited as such. No backend is configured:
    /// a handler that ran would answer something else.
    #[tokio::test]
    async fn a_uid_without_a_role_is_denied_every_op() {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.log");
        let text = format!(
            "[storage]\npath = {:?}\n[audit]\nfile = {:?}\n\
             [[roles]]\nname = \"admin\"\nunix_users = [0]\nops = [\"*\"]\nkeys = [\"*\"]\n",
            dir.path().join("registry.db"),
            audit_path,
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let policy = crate::auth::Policy::from_config(&config.roles).unwrap();
        let audit = crate::audit::AuditLog::open(&config.audit).unwrap();
        let keys =
            crate::keys::KeyManager::open(&config.storage.path, Vec::new(), config.keys.defaults)
                .unwrap();
        let app = Arc::new(App::new(config, "t.toml".into(), policy, audit, keys).unwrap());
        let peer = Peer {
            uid: 4_000_000_000,
            gid: 4_000_000_000,
            pid: None,
            groups: Vec::new(),
        };
        use custody_proto::ops::*;
        macro_rules! default_args {
            ($( ($ty:ident, $method:ident, $cname:ident, $name:literal, $args:ty, $res:ty,
                 |$a:ident| $access:expr); )*) => {
                vec![$( ($name, custody_proto::message::to_value(&<$args>::default()).unwrap()) ),*]
            };
        }
        let all: Vec<(&str, Value)> = custody_proto::for_each_op!(default_args);
        assert_eq!(all.len(), DISPATCHED.len());
        for (i, (op, mut args)) in all.into_iter().enumerate() {
            // The ops that need exactly one of two fields get one, so only authorization can fail.
            let extra = match op {
                "envelope.seal" => Some(("key", Value::Text("k".into()))),
                "rewrap" => Some(("to_key", Value::Text("k".into()))),
                "keys.cert" => Some(("self_signed", Value::Bool(true))),
                "keys.adopt" => Some(("label", Value::Text("l".into()))),
                "zk.share" => Some(("to", Value::Text("k".into()))),
                _ => None,
            };
            if let (Some((field, value)), Value::Map(m)) = (extra, &mut args) {
                m.push((Value::Text(field.into()), value));
            }
            let req = Request {
                id: i as u64 + 1,
                op: op.into(),
                args,
            };
            let resp = dispatch(&app, &peer, req).await;
            let err = resp.result.expect_err(op);
            assert_eq!(
                err.code(),
                Some(ErrorCode::PermissionDenied),
                "{op}: {err:?}"
            );
        }
        let audit = std::fs::read_to_string(&audit_path).unwrap();
        for op in DISPATCHED {
            assert!(
                audit
                    .lines()
                    .any(|l| l.contains(&format!("\"op\":\"{op}\""))
                        && l.contains("permission_denied")),
                "{op} not audited as denied"
            );
        }
    }
}
