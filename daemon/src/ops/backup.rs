//! `admin.backup`: a consistent online copy of the key registry.

use custody_proto::ops::{AdminBackup, BackupArgs, BackupResult};
use custody_proto::ErrorCode;
use sha2::{Digest, Sha256};

use super::{Ctx, Handle};
use crate::error::OpError;
use crate::keys::backup;

/// Room the response's other fields and framing take next to the copy.
const RESPONSE_OVERHEAD: usize = 1024;

impl Handle for AdminBackup {
    /// Copies the registry with SQLite's backup API on a worker thread while other requests
    /// go on; the copy travels in the response, so it must fit the frame limit.
    async fn handle(ctx: &mut Ctx, _args: BackupArgs) -> Result<BackupResult, OpError> {
        let path = ctx.app.config.storage.path.clone();
        let copy = ctx
            .blocking(move |_app| backup::backup(&path).map_err(OpError::from))
            .await?;
        let limit = ctx.app.config.server.max_frame as usize;
        if copy.bytes.len() + RESPONSE_OVERHEAD > limit {
            return Err(OpError::new(
                ErrorCode::TooLarge,
                format!(
                    "the registry copy is {} bytes, more than the frame limit ({limit} bytes) \
                     allows; raise `server.max_frame`",
                    copy.bytes.len()
                ),
            ));
        }
        tracing::info!(
            keys = copy.summary.keys,
            versions = copy.summary.versions,
            bytes = copy.bytes.len(),
            "registry backup made"
        );
        Ok(BackupResult {
            sha256: Sha256::digest(&copy.bytes).to_vec(),
            schema_version: copy.summary.schema_version,
            keys: copy.summary.keys,
            versions: copy.summary.versions,
            registry: copy.bytes,
        })
    }
}
