//! Daemons most tests start: MOSIP's registration-client keys in a swtpm, or a SoftHSM token.

use crate::builder::DaemonBuilder;
use crate::daemon::Daemon;

/// The two MOSIP registration-client keys, declared in the TPM.
pub const MOSIP_KEYS: &str = r#"[[keys.declare]]
name = "machine-sign"
kind = "rsa2048-sign"
backend = "tpm"
template = "mosip"

[[keys.declare]]
name = "machine-encrypt"
kind = "rsa2048-oaep"
backend = "tpm"
template = "mosip"
"#;

/// A builder with its own swtpm and [`MOSIP_KEYS`] declared.
pub fn tpm_builder() -> DaemonBuilder {
    DaemonBuilder::new().with_tpm().extra(MOSIP_KEYS)
}

/// A started [`tpm_builder`] daemon.
pub fn tpm_daemon() -> Daemon {
    tpm_builder().start()
}

/// A started daemon with its own SoftHSM token (no keys).
pub fn hsm_daemon() -> Daemon {
    DaemonBuilder::new().with_hsm().start()
}
