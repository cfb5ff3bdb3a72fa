//! End-to-end tests of custodyd, one file per op family in `tests/` (foundation, protocol, sign,
//! decrypt, envelope, rewrap, admin, keys_public, expiry, backend_faults, load). Each test starts
//! its own swtpm, SoftHSM token and `custodyd` process; every helper comes from the one test kit,
//! `custody-testkit`. Run `cargo build --workspace` first: the tests use the built binaries.
