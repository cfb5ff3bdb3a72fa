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
        self.blocking_within(limit, false, f).await
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
        self.blocking_within(limit, true, f).await
    }

    /// When the items of a batch op must stop, so the answer can still say which ones were not
    /// reached: nine tenths of the op timeout from now, and a tenth of it before the request's
    /// own deadline ([`crate::backend::deadline`]; set from when the request was read).
    pub fn batch_deadline(&self) -> Instant {
        let limit = self.app.config.server.op_timeout();
        let own = Instant::now() + limit * 9 / 10;
        match crate::backend::deadline::current() {
            Some(d) => own.min(d.checked_sub(limit / 10).unwrap_or(d)),
            None => own,
        }
    }

    /// `keygen`: the work may take [`crate::backend::KEYGEN_TIMEOUT`] from now even when that
    /// passes the request's deadline.
    async fn blocking_within<T, F>(
        &self,
        limit: std::time::Duration,
        keygen: bool,
        f: F,
    ) -> Result<T, OpError>
    where
        F: FnOnce(&App) -> Result<T, OpError> + Send + 'static,
        T: Send + 'static,
    {
        let timed_out = || refusal(Refused::Expired, limit);
        let deadline = Instant::now() + limit;
        // The request already runs on a worker (its slot, its turn): the work runs right here,
        // within the request's deadline (set when it was read, [`queue_limit`]), or for key
        // generation the key-generation limit from now if that is later.
        if crate::sched::on_worker() {
            let deadline = match crate::backend::deadline::current() {
                Some(d) if keygen => d.max(deadline),
                Some(d) => d,
                None => deadline,
            };
            let app = &self.app;
            return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::backend::deadline::with(deadline, || f(app))
            }))
            .unwrap_or_else(|_| Err(OpError::internal("operation failed: the job panicked")));
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
            .map_err(|e| refusal(e, limit))?;
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

/// The answer to work the scheduler did not run (`limit`: the op's time limit).
pub fn refusal(why: Refused, limit: std::time::Duration) -> OpError {
    match why {
        Refused::Full => OpError::new(
            ErrorCode::Busy,
            "too many requests waiting for the backends; retry later",
        ),
        Refused::Expired => OpError::new(
            ErrorCode::BackendUnavailable,
            format!("operation did not finish within {}s", limit.as_secs()),
        ),
        Refused::Closed => {
            OpError::new(ErrorCode::BackendUnavailable, "the daemon is shutting down")
        }
    }
}

/// How long a request of `op` may wait for a worker: the op timeout, or for the ops that
/// generate keys (PROTOCOL.md §3.4) the longer key-generation timeout. Their work itself gets
/// that limit from when it starts ([`Ctx::blocking_keygen`]).
pub fn queue_limit(app: &App, op: &str) -> std::time::Duration {
    use custody_proto::ops::names;
    let limit = app.config.server.op_timeout();
    if [names::KEYS_CREATE, names::KEYS_ROTATE].contains(&op) {
        limit.max(crate::backend::KEYGEN_TIMEOUT)
    } else {
        limit
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
async fn run<O: Handle>(ctx: &mut Ctx, req: Request) -> OpResult {
    let t = stages::start();
    let args = authorized::<O>(ctx, req)?;
    stages::end(Stage::ArgsAuthorize, t);
    let mut result = O::handle(ctx, args).await?;
    let t = stages::start();
    let value = custody_proto::message::to_value(&result).map_err(OpError::from);
    O::scrub(&mut result);
    stages::end(Stage::ResultEncode, t);
    value
}

/// Decodes the arguments of `O` and authorizes every right it declares: before its handler runs
/// ([`run`]), and for a request the scheduler refused ([`refuse`]), which is answered
/// `permission_denied` if that is what it would get.
fn authorized<O: Handle>(ctx: &mut Ctx, mut req: Request) -> Result<O::Args, OpError> {
    let args = req.args::<O::Args>();
    // The request's bytes (an envelope.seal plaintext) are not needed once decoded.
    scrub_value(&mut req.args);
    let args = args?;
    for a in O::access(&args)? {
        ctx.authorize(a.right, a.key)?;
    }
    Ok(args)
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

        fn authorize_op(op: &'static str, ctx: &mut Ctx, req: Request) -> Result<(), OpError> {
            match op {
                $( $name => authorized::<custody_proto::ops::$ty>(ctx, req).map(drop), )*
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
    let Some((op, mut ctx)) = known(app, peer, &req) else {
        return unknown(app, peer, &req, start);
    };
    let id = req.id;
    let result = run_op(op, &mut ctx, req).await;
    let resp = finish(&ctx, id, result, start);
    stages::end(Stage::Dispatch, t);
    resp
}

/// Answers a request the scheduler did not run (`why`), as [`dispatch`] would have answered it
/// had its handler failed so: its arguments are decoded and its rights checked (a caller
/// without the right is told `permission_denied`), and it is audited and counted.
pub fn refuse(app: &Arc<App>, peer: &Peer, req: Request, why: Refused) -> Response {
    let start = Instant::now();
    let Some((op, mut ctx)) = known(app, peer, &req) else {
        return unknown(app, peer, &req, start);
    };
    let id = req.id;
    let result =
        authorize_op(op, &mut ctx, req).and_then(|()| Err(refusal(why, queue_limit(app, op))));
    finish(&ctx, id, result, start)
}

/// The op's static name and a fresh context, if the daemon knows the op.
fn known(app: &Arc<App>, peer: &Peer, req: &Request) -> Option<(&'static str, Ctx)> {
    let op = DISPATCHED.iter().copied().find(|n| *n == req.op)?;
    Some((
        op,
        Ctx {
            app: app.clone(),
            peer: peer.clone(),
            op,
            role: None,
            key: None,
            version: None,
            target: None,
        },
    ))
}

/// `unknown_op`, audited without a role.
fn unknown(app: &Arc<App>, peer: &Peer, req: &Request, start: Instant) -> Response {
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
    Response::err(
        req.id,
        WireError::new(ErrorCode::UnknownOp, format!("unknown op `{shown}`")),
    )
}

/// Audits and counts an op's outcome and makes its response.
fn finish(ctx: &Ctx, id: u64, result: OpResult, start: Instant) -> Response {
    let app = &ctx.app;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    app.stats.count(ctx.op, result.is_ok());
    let mut record = Record::new(
        &ctx.peer,
        ctx.role.as_deref(),
        ctx.op,
        ctx.key.as_deref(),
        ctx.version,
        outcome,
        start.elapsed(),
    );
    record.target = ctx.target.as_deref();
    let ta = stages::start();
    let audited = app.audit(&record);
    stages::end(Stage::Audit, ta);
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
    /// An app with one role (`admin`: uid 0, every op and key), no backend, auditing to a file
    /// in `dir`.
    fn app_in(dir: &std::path::Path) -> Arc<App> {
        let audit_path = dir.join("audit.log");
        let text = format!(
            "[storage]\npath = {:?}\n[audit]\nfile = {:?}\n\
             [[roles]]\nname = \"admin\"\nunix_users = [0]\nops = [\"*\"]\nkeys = [\"*\"]\n",
            dir.join("registry.db"),
            audit_path,
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let policy = crate::auth::Policy::from_config(&config.roles).unwrap();
        let audit = crate::audit::AuditLog::open(&config.audit).unwrap();
        let keys =
            crate::keys::KeyManager::open(&config.storage.path, Vec::new(), config.keys.defaults)
                .unwrap();
        Arc::new(App::new(config, "t.toml".into(), policy, audit, keys).unwrap())
    }

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: None,
            groups: Vec::new(),
        }
    }

    /// A request the scheduler did not run is answered as dispatch would answer it: a caller
    /// without the right is told `permission_denied`, one with it the refusal; both audited.
    #[test]
    fn refused_requests_are_authorized_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_in(dir.path());
        let req = |id| Request {
            id,
            op: custody_proto::ops::names::KEYS_LIST.into(),
            args: custody_proto::message::to_value(&custody_proto::ops::KeyListArgs::default())
                .unwrap(),
        };
        let denied = refuse(&app, &peer(4_000_000_000), req(1), Refused::Full);
        let code = |r: Response| r.result.expect_err("refused").code();
        assert_eq!(code(denied), Some(ErrorCode::PermissionDenied));
        let busy = refuse(&app, &peer(0), req(2), Refused::Full);
        assert_eq!(code(busy), Some(ErrorCode::Busy));
        let late = refuse(&app, &peer(0), req(3), Refused::Expired);
        assert_eq!(code(late), Some(ErrorCode::BackendUnavailable));
        let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let lines: Vec<&str> = audit.lines().collect();
        assert_eq!(lines.len(), 3, "{audit}");
        assert!(lines[0].contains("permission_denied"), "{audit}");
        assert!(
            lines[1].contains("\"role\":\"admin\"") && lines[1].contains("\"busy\""),
            "{audit}"
        );
        assert!(lines[2].contains("backend_unavailable"), "{audit}");
    }

    #[tokio::test]
    async fn a_uid_without_a_role_is_denied_every_op() {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.log");
        let app = app_in(dir.path());
        let peer = peer(4_000_000_000);
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
