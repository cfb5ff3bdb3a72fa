//! `ping` and `status`.

use custody_proto::ops::{
    BackendStatus, Ping, PingArgs, PingResult, SchedulerStatus, Status, StatusArgs, StatusResult,
};
use custody_proto::PROTOCOL_VERSION;

use super::{Ctx, Handle};
use crate::error::OpError;

impl Handle for Ping {
    /// Echoes up to 1 KiB.
    async fn handle(_ctx: &mut Ctx, args: PingArgs) -> Result<PingResult, OpError> {
        if args.data.len() > 1024 {
            return Err(OpError::bad("ping data is limited to 1024 bytes"));
        }
        Ok(PingResult { data: args.data })
    }
}

/// The right that shows `status`'s details (per-op counters of every caller, backend details
/// such as the token label and model or the TPM's TCTI): a role whose `ops` match it (`*`,
/// `status.*`). Others see the backends' health only.
pub const STATUS_DETAIL: &str = "status.detail";

impl Handle for Status {
    /// Version, uptime, connections, backend health (probed now), per-op counters.
    async fn handle(ctx: &mut Ctx, _args: StatusArgs) -> Result<StatusResult, OpError> {
        let detail = ctx
            .app
            .policy()
            .check(&ctx.peer, STATUS_DETAIL, None)
            .is_ok();
        let kinds = ctx.app.keys.backend_kinds();
        let backends = match ctx.blocking(|app| Ok(app.keys.health())).await {
            Ok(h) => h
                .into_iter()
                .map(|(k, h)| BackendStatus {
                    name: k.as_str().into(),
                    ok: h.ok,
                    detail: if detail {
                        h.detail
                    } else if h.ok {
                        "ok".into()
                    } else {
                        "unavailable".into()
                    },
                })
                .collect(),
            Err(e) => kinds
                .into_iter()
                .map(|k| BackendStatus {
                    name: k.as_str().into(),
                    ok: false,
                    detail: if detail {
                        e.message.clone()
                    } else {
                        "unavailable".into()
                    },
                })
                .collect(),
        };
        let app = &ctx.app;
        Ok(StatusResult {
            server: crate::SERVER_NAME.into(),
            protocol: PROTOCOL_VERSION,
            uptime_secs: app.started.elapsed().as_secs(),
            connections: app.stats.connections(),
            backends,
            ops: if detail {
                app.stats.snapshot()
            } else {
                Default::default()
            },
            scheduler: detail.then(|| scheduler_status(app.sched.stats())),
        })
    }
}

fn scheduler_status(s: crate::sched::SchedStats) -> SchedulerStatus {
    SchedulerStatus {
        workers: s.workers as u64,
        queued: s.queued as u64,
        running: s.running as u64,
        started: s.started,
        expired: s.expired,
        abandoned: s.abandoned,
        rejected: s.rejected,
        late_refused: s.late_refused,
    }
}
