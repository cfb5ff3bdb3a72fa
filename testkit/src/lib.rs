//! The one test kit of the workspace: real swtpm, real SoftHSM, real `custodyd` processes.
//!
//! Used by the end-to-end tests (`tests/`), the daemon's backend tests (`daemon/tests/`) and the
//! benchmark (`bench/`). It does not depend on `custody-daemon`, so the daemon can use it as a
//! dev-dependency. Nothing here mocks hardware, and nothing skips: a missing swtpm, SoftHSM,
//! openssl or Python `cryptography` fails the test that needs it (`make deps` installs them).
//!
//! * [`Swtpm`] starts a swtpm simulator with `swtpm/swtpm-start` and stops it on drop.
//! * [`Hsm`] initialises a SoftHSM2 token with `hsm-config/init-token` and runs `pkcs11-tool`.
//! * [`DaemonBuilder`] writes a config into a fresh temporary directory and starts a [`Daemon`],
//!   waiting until it answers `hello`. A [`Daemon`] hands out clients, runs the CLI (`cli*`),
//!   sends signals, restarts on the same state, shifts its clock (libfaketime), and reads the
//!   audit file and stderr.
//! * [`cli_ok`], [`cli_json`], [`cli_err`], [`cli_usage_err`]: the CLI's success and failure
//!   contracts (exit code and `custody: CODE: message`).
//! * [`DaemonBuilder::run_as`] runs the daemon as the unprivileged `custodyd` user with the
//!   unit's restrictions ([`ensure_system_user`]); [`assert_no_secrets`] searches logs for
//!   secrets in raw, hex and base64 forms.
//! * [`Flood`] keeps many pipelined requests of one uid in flight in the background.
//! * [`RawConn`] speaks the wire protocol by hand, for tests that need to misbehave.
//! * [`openssl_verify`], [`openssl_oaep_encrypt`], [`openssl_keypair`], [`pem_from_der`]: openssl
//!   as the independent implementation; [`py_envelope`], [`python_tpm_primary`], [`py_idos`]
//!   (PyNaCl): the Python ones.
//! * [`bin_path`] finds `custodyd` / `custody` next to the running executable
//!   (`target/<profile>/`); run `cargo build --workspace` before the tests.
//!
//! ```no_run
//! use custody_testkit::{cli_ok, DaemonBuilder};
//! let mut d = DaemonBuilder::new().server(&["max_connections = 8"]).start();
//! cli_ok(&d, &["ping"]);
//! assert_eq!(d.terminate().code(), Some(0));
//! ```
#![forbid(unsafe_code)]

mod builder;
mod cli;
mod daemon;
mod data;
mod flood;
mod hsm;
mod keys;
mod openssl;
mod presets;
mod process;
mod python;
mod raw;
mod secrets;
mod swtpm;
mod system;

pub use custody_client::{BlockingClient, Client, ClientError, Reconnecting};
pub use custody_proto as proto;

pub use builder::{toml_str, DaemonBuilder, DEFAULT_ROLES};
pub use cli::{
    cli_err, cli_json, cli_ok, cli_usage_err, exit_code_of, status_backend, status_json,
};
pub use daemon::{memlock_unlimited, Daemon, EXIT_TIMEOUT, FAKETIME_LIB, READY_TIMEOUT};
pub use data::{
    b64std, b64std_decode, b64url, b64url_decode, file, flip, key_index, path_str, random, read,
    sha256, write,
};
pub use flood::{Flood, FloodCounts};
pub use hsm::{Hsm, SOFTHSM_MODULE};
pub use keys::{
    assert_no_pin, cli_public, create_pkcs11, create_software, pem, public, rsa_public, show, st,
    states, thumb, token_labels, verify_pkcs1,
};
pub use openssl::{
    openssl, openssl_keypair, openssl_oaep_encrypt, openssl_oaep_encrypt_der, openssl_verify,
    openssl_verify_der, pem_from_der, KeyPair, RsaSig,
};
pub use presets::{hsm_daemon, tpm_builder, tpm_daemon, MOSIP_KEYS};
pub use process::{
    bin_path, custody_bin, custodyd_bin, run_helper_test, run_ok, run_with_input, run_with_timeout,
    stderr, stdout, wait_for, workspace_file, workspace_root, HelperAs, SEC,
};
pub use python::{
    py_ca, py_envelope, py_idos, py_idos_json, py_zk, python, python_tpm_primary, require_pynacl,
    require_python_cryptography, IDOS_NACL_PY, MOSIP_ENVELOPE_PY, MOSIP_ZK_PY, TPM_PRIMARY_PY,
    X509_CA_PY,
};
pub use raw::{
    err_code, frame_bytes, ping_args, ping_data, request_body, server_code, RawConn, Reply,
};
pub use secrets::{assert_no_secrets, secret_forms};
pub use swtpm::Swtpm;
pub use system::{chown_tree, ensure_system_user, Account, Tmpfs};
