//! `make test` runs the benchmark harness in smoke mode (tiny durations and counts): every phase
//! runs and every figure is written. Harness correctness only; no timing is asserted.

use std::process::Command;

#[test]
fn the_harness_runs_every_phase_and_writes_its_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let md = dir.path().join("BENCHMARKS.md");
    let json = dir.path().join("report.json");
    // The section `make bench-peers` owns must survive the rewrite.
    let peers = "<!-- peers:begin -->\n## custodyd against Parsec\n<!-- peers:end -->";
    std::fs::write(&md, format!("# Benchmarks\n\nan older run\n\n{peers}\n")).expect("old file");
    let out = Command::new(env!("CARGO_BIN_EXE_custody-bench"))
        .env("BENCH_SMOKE", "1")
        .env("BENCH_OUT", &md)
        .env("BENCH_JSON", &json)
        .output()
        .expect("run custody-bench");
    assert!(
        out.status.success(),
        "custody-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&md).expect("BENCHMARKS.md written");
    for section in [
        "SMOKE RUN",
        "## Daemon vs direct",
        "## Fairness under a flood",
        "## Memory and start-up",
        "## Where the time goes",
        "## Targets",
        "## Reading",
    ] {
        assert!(text.contains(section), "no {section:?} in:\n{text}");
    }
    assert!(text.contains(peers), "the peer section was lost:\n{text}");
    assert!(!text.contains("an older run"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report.json written"))
            .expect("report.json is JSON");
    let rows = v["rows"].as_array().expect("rows");
    for (op, callers) in [
        ("ping", 1),
        ("HSM RSA-2048 sign", 1),
        ("HSM RSA-2048 sign", 2),
        ("HSM RSA-OAEP-SHA256 unwrap", 2),
        ("Envelope open (1 KiB)", 1),
        ("TPM RSA-2048 sign (MOSIP key)", 1),
        ("idOS box.open (1 KiB)", 2),
        ("idOS box.reencrypt (1 KiB)", 2),
        ("HSM Ed25519 sign (256 B)", 1),
    ] {
        let row = rows
            .iter()
            .find(|r| r["op"] == op && r["callers"] == callers)
            .unwrap_or_else(|| panic!("no row {op} × {callers}: {v}"));
        assert!(row["daemon"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        for field in ["p50_us", "p99_us", "daemon_cpu_us_per_op"] {
            assert!(row[field].is_number(), "{field} in {row}");
        }
        if op != "ping" {
            assert!(row["direct"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
            assert!(row["ratio"].is_number(), "{row}");
            assert!(row["outside_token_cpu_us_per_op"].is_number(), "{row}");
        }
    }
    assert!(v["rss_idle_mib"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert!(v["pool_ready_s"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert_eq!(v["pool_keys"], 20, "{v}");
    assert!(
        v["fairness"]["loaded_p99_us"].as_f64().unwrap_or(0.0) > 0.0,
        "{v}"
    );
    assert!(v["fairness"]["flood_ok"].as_u64().unwrap_or(0) > 0, "{v}");
    let stages = v["stages_us"].as_object().expect("stages");
    assert!(stages["token_call"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert!(stages["dispatch"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert!(v["targets"].as_array().is_some_and(|t| t.len() > 10), "{v}");
}
