//! The audit trail: hash-chained lines with signed checkpoints, `custody audit verify` naming
//! the first line altered, removed or reordered, rotation continuing the chain, and
//! `audit.required` refusing ops whose line cannot be written (issue 11, finding 6).

use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_testkit::proto::ErrorCode;
use custody_testkit::*;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

const AUDIT_KEY: &str = r#"[[keys.declare]]
name = "audit-key"
kind = "rsa2048-sign"
backend = "pkcs11"
"#;

/// A SoftHSM daemon whose audit file is chained and checkpointed every 4 lines by `audit-key`.
fn audited() -> Daemon {
    DaemonBuilder::new()
        .with_hsm()
        .audit(&["sign_key = \"audit-key\"", "checkpoint_every = 4"])
        .extra(AUDIT_KEY)
        .start()
}

/// `custody --json audit verify FILE [--pubkey PEM]`: (exit code, JSON).
fn verify(d: &Daemon, file: &Path, pubkey: Option<&Path>) -> (i32, Json) {
    let mut args = vec!["--json", "audit", "verify", path_str(file)];
    if let Some(p) = pubkey {
        args.extend(["--pubkey", path_str(p)]);
    }
    let out = d.cli(&args);
    let j = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    (out.status.code().unwrap(), j)
}

fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(d: &Daemon, name: &str, lines: &[String]) -> PathBuf {
    let mut t = lines.join("\n");
    t.push('\n');
    write(d, name, t.as_bytes())
}

/// The message of a failed verification (exit 19, `integrity`).
fn broken(d: &Daemon, file: &Path, pubkey: Option<&Path>) -> String {
    let (code, j) = verify(d, file, pubkey);
    assert_eq!(code, exit_code_of(ErrorCode::Integrity), "{j}");
    assert_eq!(j["error"]["code"], "integrity", "{j}");
    j["error"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn chain_verifies_and_names_edits_deletions_and_swaps() {
    let mut d = audited();
    for _ in 0..9 {
        cli_ok(&d, &["ping"]);
    }
    cli_err(&d, &["keys", "show", "nope"], ErrorCode::NotFound);
    let pem = pem(&d, "audit-key", 1);
    let other = {
        create_pkcs11(&d, "other-key", "rsa2048-sign");
        pem_file(&d, "other-key")
    };
    assert_eq!(d.terminate().code(), Some(0));
    let file = d.audit_path().to_path_buf();
    let lines = lines_of(&file);
    // Every line carries seq and prev; checkpoints are signed and the last line is the
    // closing checkpoint written at shutdown.
    let recs: Vec<Json> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "{r}");
    }
    assert_eq!(recs[0]["prev"], "0".repeat(64));
    assert_eq!(
        recs[1]["prev"],
        hex::encode(Sha256::digest(lines[0].as_bytes()))
    );
    assert_eq!(recs.last().unwrap()["op"], "audit.checkpoint");
    assert_eq!(recs[4]["op"], "audit.checkpoint", "{}", recs[4]);

    let (code, j) = verify(&d, &file, Some(&pem));
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["lines"], lines.len());
    let cps = j["checkpoints"].as_u64().unwrap();
    assert!(cps >= 3, "{j}");
    assert_eq!(j["verified_checkpoints"], cps, "{j}");
    assert_eq!(j["unsigned_tail"], 0, "{j}");
    // The human form says the same.
    let out = d.cli(&["audit", "verify", path_str(&file)]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("chain intact"), "{out:?}");

    // An edit: line 4's op changed.
    let mut edited = lines.clone();
    assert!(edited[3].contains("\"op\":\"ping\""), "{}", edited[3]);
    edited[3] = edited[3].replace("\"op\":\"ping\"", "\"op\":\"status\"");
    let f = write_lines(&d, "edited.log", &edited);
    let m = broken(&d, &f, Some(&pem));
    assert!(m.contains("line 4 was altered"), "{m}");

    // A deletion: line 6 removed.
    let mut deleted = lines.clone();
    deleted.remove(5);
    let f = write_lines(&d, "deleted.log", &deleted);
    let m = broken(&d, &f, None);
    assert!(m.contains("line 6") && m.contains("removed"), "{m}");

    // A swap: lines 7 and 8.
    let mut swapped = lines.clone();
    swapped.swap(6, 7);
    let f = write_lines(&d, "swapped.log", &swapped);
    let m = broken(&d, &f, None);
    assert!(m.contains("line 7") && m.contains("reordered"), "{m}");

    // An edit with every later `prev` recomputed passes the hash chain, not the signatures.
    let mut forged = edited.clone();
    for i in 4..forged.len() {
        let h = hex::encode(Sha256::digest(forged[i - 1].as_bytes()));
        let mut v: serde_json::Map<String, Json> = serde_json::from_str(&forged[i]).unwrap();
        v.insert("prev".into(), Json::String(h));
        forged[i] = rechain(&v);
    }
    let f = write_lines(&d, "forged.log", &forged);
    assert_eq!(verify(&d, &f, None).0, 0);
    let m = broken(&d, &f, Some(&pem));
    assert!(m.contains("signature does not verify"), "{m}");
    // Another key does not verify the genuine file.
    let m = broken(&d, &file, Some(&other));
    assert!(m.contains("signature does not verify"), "{m}");
    // A torn last line.
    let t = std::fs::read(&file).unwrap();
    let f = write(&d, "torn.log", &t[..t.len() - 5]);
    assert!(broken(&d, &f, None).contains("cut short"));
}

/// `seq` and `prev` first, then the rest as written (serde_json keeps insertion order only with
/// `preserve_order`; the verifier does not care about member order).
fn rechain(v: &serde_json::Map<String, Json>) -> String {
    serde_json::to_string(v).unwrap()
}

fn pem_file(d: &Daemon, key: &str) -> PathBuf {
    pem(d, key, 1)
}

/// Rotation: the file renamed away and SIGHUP: the new file continues the chain from the last
/// line of the old one; each verifies, and so do both together.
#[test]
fn rotated_file_continues_the_chain() {
    let mut d = audited();
    for _ in 0..5 {
        cli_ok(&d, &["ping"]);
    }
    let pem = pem(&d, "audit-key", 1);
    let file = d.audit_path().to_path_buf();
    let old = file.with_extension("log.1");
    std::fs::rename(&file, &old).unwrap();
    d.reload();
    wait_for(10 * SEC, "the audit file to be reopened", || {
        cli_ok(&d, &["ping"]);
        file.exists().then_some(())
    });
    for _ in 0..3 {
        cli_ok(&d, &["ping"]);
    }
    assert_eq!(d.terminate().code(), Some(0));
    let (code, j) = verify(&d, &old, Some(&pem));
    assert_eq!(code, 0, "{j}");
    let (code, j) = verify(&d, &file, Some(&pem));
    assert_eq!(code, 0, "{j}");
    let last_old = lines_of(&old).pop().unwrap();
    assert_eq!(
        j["continues_from"],
        hex::encode(Sha256::digest(last_old.as_bytes())),
        "{j}"
    );
    let mut both = lines_of(&old);
    both.extend(lines_of(&file));
    let f = write_lines(&d, "both.log", &both);
    let (code, j) = verify(&d, &f, Some(&pem));
    assert_eq!(code, 0, "{j}");
    assert_eq!(j["first_seq"], 1);
}

/// Finding 6: with `audit.required` (the default) an op whose audit line cannot be written (the
/// audit file on a full tmpfs) is refused `internal` "audit unavailable"; nothing half written
/// stays in the file. Before: the failure was logged and the op answered.
#[test]
fn op_is_refused_when_the_audit_file_system_is_full() {
    let mut d = DaemonBuilder::new().prepare();
    let fs = Tmpfs::mount(&d.dir().join("auditfs"), "64k");
    let file = d.dir().join("auditfs/audit.log");
    let text = d
        .config_text()
        .replace(path_str(d.audit_path()), path_str(&file));
    d.write_raw_config(&text);
    d.spawn();
    d.wait_ready(READY_TIMEOUT);
    cli_ok(&d, &["ping"]);
    fs.fill("filler");
    // The audit file's last page may still hold a few lines.
    let msg = (0..200)
        .find_map(|_| {
            let out = d.cli(&["ping"]);
            (!out.status.success()).then(|| {
                assert_eq!(
                    out.status.code(),
                    Some(exit_code_of(ErrorCode::Internal)),
                    "{out:?}"
                );
                stderr(&out)
            })
        })
        .expect("an op must be refused once its audit line cannot be written");
    assert!(msg.contains("audit unavailable"), "{msg}");
    std::fs::remove_file(d.dir().join("auditfs/filler")).unwrap();
    cli_ok(&d, &["ping"]);
    assert_eq!(d.terminate().code(), Some(0));
    let (code, j) = verify(&d, &file, None);
    assert_eq!(code, 0, "{j}");
    // Without `required`, the op is answered and the failure only logged.
    let text = std::fs::read_to_string(d.config_path())
        .unwrap()
        .replace("[audit]\n", "[audit]\nrequired = false\n");
    d.write_raw_config(&text);
    d.spawn();
    d.wait_ready(READY_TIMEOUT);
    fs.fill("filler");
    for _ in 0..50 {
        cli_ok(&d, &["ping"]);
    }
    assert!(d.stderr().contains("audit line not written"));
    assert_eq!(d.terminate().code(), Some(0));
    // The restarted daemon continued the chain; lines that failed left nothing behind.
    let (code, j) = verify(&d, &file, None);
    assert_eq!(code, 0, "{j}");
    drop(fs);
}

/// Finding 6: an unknown op is audited with no role (no role allowed anything).
#[test]
fn unknown_op_is_attributed_to_no_role() {
    let mut d = DaemonBuilder::new().start();
    let mut c = d.raw();
    assert!(c.hello().unwrap().result.is_ok());
    c.send(5, "no.such.op", &ping_args(b"x")).unwrap();
    match c.read(Duration::from_secs(10)) {
        Reply::Frame(r) => assert_eq!(err_code(&r), Some(ErrorCode::UnknownOp)),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.terminate().code(), Some(0));
    let l = d
        .audit_lines()
        .into_iter()
        .find(|l| l["op"] == "no.such.op")
        .expect("audited");
    assert_eq!(l["role"], Json::Null, "{l}");
    assert_eq!(l["outcome"], "unknown_op", "{l}");
}
