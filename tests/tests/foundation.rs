//! Foundation tests: protocol, limits, authorization, signals, socket, config, audit.
//! No TPM or HSM needed.

use custody_e2e::proto::ops::{names, PingArgs, PingResult, StatusArgs, StatusResult};
use custody_e2e::*;

#[test]
fn ping_and_status_library_and_cli() {
    let mut d = DaemonBuilder::new().start();
    let c = d.client();
    let r: PingResult = c
        .call(
            names::PING,
            &PingArgs {
                data: b"hi".to_vec(),
            },
        )
        .unwrap();
    assert_eq!(r.data, b"hi");
    let s: StatusResult = c.call(names::STATUS, &StatusArgs {}).unwrap();
    assert!(s.server.starts_with("custodyd"));
    let out = d.cli(&["ping"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.terminate().code(), Some(0));
}
