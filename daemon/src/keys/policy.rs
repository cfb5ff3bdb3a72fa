//! MOSIP's validity policy: a version is current while created ≤ now < not_after − pre_expire;
//! an expired current version is rotated on next use when the policy says so, else refused.

use std::sync::Arc;

use custody_proto::ErrorCode;

use super::record::{now, KeyRecord, VersionRecord};
use super::KeyManager;
use crate::backend::Template;
use crate::error::OpError;

impl KeyRecord {
    /// True when `v` is past its usable period: now ≥ not_after − pre_expire. MOSIP-template
    /// TPM keys never expire: they are the machine's identity for the TPM's lifetime (the same
    /// TPM always yields the same key), so no new version could replace them.
    pub fn expired(&self, v: &VersionRecord, now: i64) -> bool {
        self.template != Template::Mosip
            && (now < v.created || now >= v.not_after - i64::from(self.pre_expire_days) * 86_400)
    }
}

/// `key_retired`: the key has no active version.
pub(super) fn no_active(name: &str) -> OpError {
    OpError::new(
        ErrorCode::KeyRetired,
        format!("key `{name}` has no active version"),
    )
}

impl KeyManager {
    /// The record and the version number to use for a new signature or encryption: the current
    /// one, rotated first when expired and the policy says so, else `key_expired`.
    pub(super) fn current_for_use(
        &self,
        rec: Arc<KeyRecord>,
    ) -> Result<(Arc<KeyRecord>, u32), OpError> {
        let name = rec.name.clone();
        let cur = rec.current().ok_or_else(|| no_active(&name))?;
        if !rec.expired(cur, now()) {
            let v = cur.version;
            return Ok((rec, v));
        }
        if !self.policy.auto_rotate {
            return Err(OpError::new(
                ErrorCode::KeyExpired,
                format!("current version {} of `{name}` has expired", cur.version),
            ));
        }
        let old = cur.version;
        // Concurrent requests may all see the expired version: only the first rotates.
        let rec = self.rotate_if(&name, |r| {
            r.current()
                .is_none_or(|c| c.version == old || r.expired(c, now()))
        })?;
        let v = rec.current().ok_or_else(|| no_active(&name))?.version;
        Ok((rec, v))
    }
}
