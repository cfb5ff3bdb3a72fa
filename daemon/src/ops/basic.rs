//! `ping` and `status`.

use custody_proto::ops::{BackendStatus, PingArgs, PingResult, StatusResult};
use custody_proto::{Request, PROTOCOL_VERSION};

use super::{encode, Ctx, OpResult};
use crate::error::OpError;

/// Echoes up to 1 KiB.
pub async fn ping(ctx: &mut Ctx, req: &Request) -> OpResult {
    let args: PingArgs = req.args()?;
    ctx.authorize(None)?;
    if args.data.len() > 1024 {
        return Err(OpError::bad("ping data is limited to 1024 bytes"));
    }
    encode(&PingResult { data: args.data })
}

/// Version, uptime, connections, backend health (probed now), per-op counters.
pub async fn status(ctx: &mut Ctx, req: &Request) -> OpResult {
    let _: custody_proto::ops::StatusArgs = req.args()?;
    ctx.authorize(None)?;
    let kinds = ctx.app.keys.backend_kinds();
    let backends = match ctx.blocking(|app| Ok(app.keys.health())).await {
        Ok(h) => h
            .into_iter()
            .map(|(k, h)| BackendStatus {
                name: k.as_str().into(),
                ok: h.ok,
                detail: h.detail,
            })
            .collect(),
        Err(e) => kinds
            .into_iter()
            .map(|k| BackendStatus {
                name: k.as_str().into(),
                ok: false,
                detail: e.message.clone(),
            })
            .collect(),
    };
    let app = &ctx.app;
    encode(&StatusResult {
        server: crate::SERVER_NAME.into(),
        protocol: PROTOCOL_VERSION,
        uptime_secs: app.started.elapsed().as_secs(),
        connections: app.stats.connections(),
        backends,
        ops: app.stats.snapshot(),
    })
}
