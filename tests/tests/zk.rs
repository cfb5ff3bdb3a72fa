//! MOSIP's zero-knowledge key pool (`zk *`, `keys adopt`) end to end against real SoftHSM tokens:
//! round trips and refusals, byte-exact interop with the independent Python implementation
//! (`mosip_zk.py`), a kernel daemon and an IDA daemon passing pool keys with MOSIP's share strings,
//! master rotation interrupted by kill -9, and taking over a MOSIP pool wrapped under a K9 that
//! already sits in the HSM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_testkit::proto::ops::{ZkAttribute, ZkCryptArgs};
use custody_testkit::proto::ErrorCode;
use custody_testkit::{
    b64url, b64url_decode, cli_err, cli_json, cli_ok, create_pkcs11, file, hsm_daemon,
    openssl_keypair, path_str, py_zk, random, read, stdout, write, Daemon, DaemonBuilder,
};
use serde_json::Value as Json;

/// A pool `pool` of `size` keys under a new HSM master `master`, shared to `share_to`.
fn pool(d: &Daemon, pool: &str, master: &str, size: u32, share_to: &[&str]) -> Json {
    if show_key(d, master).is_none() {
        create_pkcs11(d, master, "aes256");
    }
    let size = size.to_string();
    let mut args = vec!["zk", "init", pool, "--master", master, "--size", &size];
    for s in share_to {
        args.extend(["--share-to", s]);
    }
    cli_json(d, &args)
}

fn show_key(d: &Daemon, name: &str) -> Option<Json> {
    let o = d.cli(&["--json", "keys", "show", name]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

/// `zk encrypt POOL --id ID` of `value`: (the `--json` answer, the raw attribute file).
fn encrypt(d: &Daemon, pool: &str, id: &str, value: &[u8]) -> (Json, PathBuf) {
    let n = random(6)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let input = write(d, &format!("zk-in-{n}"), value);
    let out = file(d, &format!("zk-attr-{n}"));
    let j = cli_json(
        d,
        &[
            "zk",
            "encrypt",
            pool,
            "--id",
            id,
            "--in",
            path_str(&input),
            "--out",
            path_str(&out),
        ],
    );
    assert_eq!(
        b64url_decode(j["attributes"][0]["value"].as_str().unwrap()),
        read(&out),
        "{j}"
    );
    (j, out)
}

/// `zk decrypt POOL --id ID --in FILE`: the plaintext.
fn decrypt(d: &Daemon, pool: &str, id: &str, attr: &Path) -> Vec<u8> {
    stdout_bytes(&cli_ok(
        d,
        &["zk", "decrypt", pool, "--id", id, "--in", path_str(attr)],
    ))
}

/// `zk decrypt POOL --id ID` of the attribute `bytes` must fail with `code`; the message.
fn decrypt_err(d: &Daemon, pool: &str, id: &str, bytes: &[u8], code: ErrorCode) -> String {
    let f = write(d, "refused.attr", bytes);
    cli_err(
        d,
        &["zk", "decrypt", pool, "--id", id, "--in", path_str(&f)],
        code,
    )
}

fn stdout_bytes(o: &std::process::Output) -> Vec<u8> {
    o.stdout.clone()
}

fn index_of(j: &Json) -> u32 {
    j["index"].as_u64().unwrap() as u32
}

#[test]
fn attributes_round_trip_with_the_right_id_only() {
    let d = hsm_daemon();
    create_pkcs11(&d, "ida-k22", "rsa2048-oaep");
    let p = pool(&d, "cred", "k9", 300, &["ida-k22"]);
    assert_eq!(p["size"], 300, "{p}");
    assert_eq!(p["min_index"], 0, "{p}");
    assert_eq!(p["max_index"], 299, "{p}");
    assert_eq!(
        p["masters"],
        serde_json::json!([{"version": 1, "keys": 300}]),
        "{p}"
    );
    // Idempotent, and completes a smaller pool.
    let again = cli_json(
        &d,
        &["zk", "init", "cred", "--master", "k9", "--size", "300"],
    );
    assert_eq!(again["size"], 300, "{again}");
    assert_eq!(again["share_to"], serde_json::json!(["ida-k22"]), "{again}");
    create_pkcs11(&d, "k9b", "aes256");
    let other_master = cli_err(
        &d,
        &["zk", "init", "cred", "--master", "k9b"],
        ErrorCode::AlreadyExists,
    );
    assert!(other_master.contains("another master"), "{other_master}");

    let value = b"1990/01/01 date of birth".to_vec();
    let (j, attr) = encrypt(&d, "cred", "4827615930", &value);
    let raw = read(&attr);
    assert_eq!(raw.len(), 4 + 12 + 32 + value.len() + 16);
    assert_eq!(
        u32::from_be_bytes(raw[..4].try_into().unwrap()),
        index_of(&j)
    );
    // One share segment, addressed to ida-k22's thumbprint.
    let k22 = show_key(&d, "ida-k22").unwrap();
    let seg = b64url_decode(j["share"].as_str().unwrap());
    assert_eq!(seg.len(), 32 + 256);
    let thumb = hex::encode(&seg[..32]);
    let k22_thumbs = k22["versions"][0]["thumbprint"].to_string();
    assert!(
        k22_thumbs.contains(&thumb) || thumb_of(&k22) == thumb,
        "{thumb} vs {k22}"
    );
    assert_eq!(decrypt(&d, "cred", "4827615930", &attr), value);
    // MOSIP's text form decrypts too.
    let text = write(&d, "attr.txt", b64url(&raw).as_bytes());
    assert_eq!(decrypt(&d, "cred", "4827615930", &text), value);

    // A wrong id, tampered data, an index that names another or no key: integrity.
    cli_err(
        &d,
        &[
            "zk",
            "decrypt",
            "cred",
            "--id",
            "4827615931",
            "--in",
            path_str(&attr),
        ],
        ErrorCode::Integrity,
    );
    for i in [5, 20, 60, raw.len() - 1] {
        let mut t = raw.clone();
        t[i] ^= 0x40;
        decrypt_err(&d, "cred", "4827615930", &t, ErrorCode::Integrity);
    }
    for index in [(index_of(&j) + 1) % 300, 70_000] {
        let mut t = raw.clone();
        t[..4].copy_from_slice(&index.to_be_bytes());
        decrypt_err(&d, "cred", "4827615930", &t, ErrorCode::Integrity);
    }
    // Bad input: typed errors.
    let short = write(&d, "short", &raw[..63]);
    let m = cli_err(
        &d,
        &[
            "zk",
            "decrypt",
            "cred",
            "--id",
            "1",
            "--in",
            path_str(&short),
        ],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("at least 64 bytes"), "{m}");
    cli_err(
        &d,
        &["zk", "decrypt", "cred", "--id", "", "--in", path_str(&attr)],
        ErrorCode::BadRequest,
    );
    let long_id = "9".repeat(257);
    cli_err(
        &d,
        &[
            "zk",
            "decrypt",
            "cred",
            "--id",
            &long_id,
            "--in",
            path_str(&attr),
        ],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &[
            "zk",
            "decrypt",
            "nope",
            "--id",
            "1",
            "--in",
            path_str(&attr),
        ],
        ErrorCode::NotFound,
    );
    cli_err(&d, &["zk", "show", "nope"], ErrorCode::NotFound);
    cli_err(
        &d,
        &["zk", "share", "cred", "--index", "300", "--to", "ida-k22"],
        ErrorCode::NotFound,
    );
    cli_err(
        &d,
        &["zk", "init", "big", "--master", "k9", "--size", "100001"],
        ErrorCode::BadRequest,
    );
    cli_err(
        &d,
        &["zk", "init", "bad name", "--master", "k9"],
        ErrorCode::BadRequest,
    );

    // The batch form: one id, many attributes, one index.
    let c = d.client();
    let attributes: Vec<ZkAttribute> = (0..16)
        .map(|i| ZkAttribute {
            identifier: format!("attr{i}"),
            value: random(1024),
        })
        .collect();
    let r = c
        .zk_encrypt(&ZkCryptArgs {
            pool: "cred".into(),
            id: "VID-77".into(),
            attributes: attributes.clone(),
        })
        .unwrap();
    assert_eq!(r.attributes.len(), 16);
    for a in &r.attributes {
        assert_eq!(
            u32::from_be_bytes(a.value[..4].try_into().unwrap()),
            r.index
        );
    }
    let back = c
        .zk_decrypt(&ZkCryptArgs {
            pool: "cred".into(),
            id: "VID-77".into(),
            attributes: r.attributes.clone(),
        })
        .unwrap();
    for (a, b) in attributes.iter().zip(&back.attributes) {
        assert_eq!(a.identifier, b.identifier);
        assert_eq!(a.value, b.value);
    }
    // The index is spread over the pool (CSPRNG choice): 40 requests hit more than 30 indices.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let r = c
            .zk_encrypt(&ZkCryptArgs {
                pool: "cred".into(),
                id: "x".into(),
                attributes: vec![ZkAttribute::default()],
            })
            .unwrap();
        seen.insert(r.index);
    }
    assert!(seen.len() > 30, "{seen:?}");
    // No plaintext or id in the audit trail.
    let audit = std::fs::read_to_string(d.audit_path()).unwrap();
    assert!(audit.contains("zk.encrypt"), "audit lacks zk.encrypt");
    assert!(!audit.contains("4827615930") && !audit.contains("date of birth"));
}

/// Hex SHA-256 thumbprint of a key's current version, from `keys show`.
fn thumb_of(k: &Json) -> String {
    let v = k["versions"].as_array().unwrap().last().unwrap();
    match &v["thumbprint"] {
        Json::Array(a) => a
            .iter()
            .map(|b| format!("{:02x}", b.as_u64().unwrap()))
            .collect(),
        Json::String(s) => s.clone(),
        other => panic!("thumbprint {other}"),
    }
}

#[test]
fn python_mosip_implementation_interoperates_byte_exact() {
    let d = hsm_daemon();
    let mine = openssl_keypair(d.dir(), "partner", 2048);
    pool(&d, "cred", "k9", 50, &[]);
    // The daemon shares pool key 17 to a key the test holds; Python opens the share.
    let share = stdout(&cli_ok(
        &d,
        &[
            "zk",
            "share",
            "cred",
            "--index",
            "17",
            "--to-pem",
            path_str(&mine.public_pem),
        ],
    ));
    let zkn = py_zk(&[
        "open-share",
        "--priv",
        path_str(&mine.key),
        "--share",
        share.trim(),
    ]);
    let zkn = stdout(&zkn).trim().to_owned();
    assert_eq!(zkn.len(), 64, "{zkn}");

    // Python encrypts at index 17 → the daemon decrypts.
    let value = random(700);
    let plain = write(&d, "plain", &value);
    let py_attr = file(&d, "py.attr");
    py_zk(&[
        "encrypt",
        "--key",
        &zkn,
        "--id",
        "ID-1",
        "--index",
        "17",
        "--in",
        path_str(&plain),
        "--out",
        path_str(&py_attr),
        "--text",
    ]);
    assert_eq!(decrypt(&d, "cred", "ID-1", &py_attr), value);

    // The daemon's attributes → Python decrypts, once the daemon used index 17.
    let mut found = false;
    for _ in 0..400 {
        let (j, attr) = encrypt(&d, "cred", "ID-2", &value);
        if index_of(&j) != 17 {
            continue;
        }
        let out = file(&d, "py.plain");
        py_zk(&[
            "decrypt",
            "--key",
            &zkn,
            "--id",
            "ID-2",
            "--in",
            path_str(&attr),
            "--out",
            path_str(&out),
        ]);
        assert_eq!(read(&out), value);
        found = true;
        break;
    }
    assert!(
        found,
        "index 17 never chosen in 400 encryptions of a 50-key pool"
    );

    // A share string made by Python for several recipients: the daemon takes the segment for
    // its key.
    let k22 = create_pkcs11(&d, "ida-k22", "rsa2048-oaep");
    assert_eq!(k22["current_version"], 1);
    let k22_pem = custody_testkit::pem(&d, "ida-k22", 1);
    let other = openssl_keypair(d.dir(), "other", 2048);
    let fresh = hex::encode(random(32));
    let s = py_zk(&[
        "share",
        "--key",
        &fresh,
        "--pub",
        path_str(&other.public_pem),
        "--pub",
        path_str(&k22_pem),
    ]);
    let s = write(&d, "share.txt", stdout(&s).trim().as_bytes());
    cli_ok(&d, &["zk", "init", "ida", "--master", "k9", "--size", "0"]);
    let j = cli_json(
        &d,
        &[
            "zk",
            "import",
            "ida",
            "--with",
            "ida-k22",
            "--in",
            path_str(&s),
            "--index",
            "9",
        ],
    );
    assert_eq!(j["imported"], true, "{j}");
    let pa = file(&d, "fresh.attr");
    py_zk(&[
        "encrypt",
        "--key",
        &fresh,
        "--id",
        "UIN-9",
        "--index",
        "9",
        "--in",
        path_str(&plain),
        "--out",
        path_str(&pa),
    ]);
    assert_eq!(decrypt(&d, "ida", "UIN-9", &pa), value);
}

#[test]
fn kernel_and_ida_daemons_pass_pool_keys_with_share_strings() {
    // IDA: K22 (certified) and K18 in its own token; an empty pool.
    let ida = hsm_daemon();
    create_pkcs11(&ida, "k22", "rsa2048-oaep");
    let k22_cert = file(&ida, "k22.pem");
    create_pkcs11(&ida, "ida-ca", "rsa2048-sign");
    let ca_cert = file(&ida, "ida-ca.pem");
    cli_ok(
        &ida,
        &[
            "keys",
            "cert",
            "ida-ca",
            "--self-signed",
            "--ca",
            "--subject",
            "CN=IDA-CA",
            "--out",
            path_str(&ca_cert),
        ],
    );
    cli_ok(
        &ida,
        &[
            "keys",
            "cert",
            "k22",
            "--issuer",
            "ida-ca",
            "--subject",
            "CN=IDA-CRED",
            "--out",
            path_str(&k22_cert),
        ],
    );
    create_pkcs11(&ida, "k18", "aes256");
    cli_ok(
        &ida,
        &["zk", "init", "ida-pool", "--master", "k18", "--size", "0"],
    );
    // Kernel: K9, its pool, and IDA's certificate as the share recipient.
    let kernel = hsm_daemon();
    let cert_copy = write(&kernel, "ida-k22.pem", &read(&k22_cert));
    cli_ok(
        &kernel,
        &[
            "keys",
            "import",
            "ida-k22",
            "--kind",
            "rsa2048-oaep",
            "--in",
            path_str(&cert_copy),
        ],
    );
    pool(&kernel, "cred", "k9", 1000, &["ida-k22"]);

    let value = b"Jane Doe".to_vec();
    let (j, attr) = encrypt(&kernel, "cred", "7390128546", &value);
    let index = index_of(&j).to_string();
    let share = write(&ida, "share", j["share"].as_str().unwrap().as_bytes());
    let imp = cli_json(
        &ida,
        &[
            "zk",
            "import",
            "ida-pool",
            "--with",
            "k22",
            "--in",
            path_str(&share),
            "--index",
            &index,
        ],
    );
    assert_eq!(imp["imported"], true, "{imp}");
    // The certificate's thumbprint addressed it (MOSIP's rule).
    let again = cli_json(
        &ida,
        &[
            "zk",
            "import",
            "ida-pool",
            "--with",
            "k22",
            "--in",
            path_str(&share),
            "--index",
            &index,
        ],
    );
    assert_eq!(again["imported"], false, "{again}");
    let ida_attr = write(&ida, "attr", &read(&attr));
    assert_eq!(decrypt(&ida, "ida-pool", "7390128546", &ida_attr), value);
    cli_err(
        &ida,
        &[
            "zk",
            "decrypt",
            "ida-pool",
            "--id",
            "7390128547",
            "--in",
            path_str(&ida_attr),
        ],
        ErrorCode::Integrity,
    );
    let shown = cli_json(&ida, &["zk", "show", "ida-pool"]);
    assert_eq!(shown["size"], 1, "{shown}");

    // Another pool key offered at the same index is refused, and nothing changes.
    let other_index = (index_of(&j) + 1) % 1000;
    let other = stdout(&cli_ok(
        &kernel,
        &[
            "zk",
            "share",
            "cred",
            "--index",
            &other_index.to_string(),
            "--to",
            "ida-k22",
        ],
    ));
    let other = write(&ida, "other-share", other.trim().as_bytes());
    let m = cli_err(
        &ida,
        &[
            "zk",
            "import",
            "ida-pool",
            "--with",
            "k22",
            "--in",
            path_str(&other),
            "--index",
            &index,
        ],
        ErrorCode::AlreadyExists,
    );
    assert!(m.contains("different key"), "{m}");
    assert_eq!(decrypt(&ida, "ida-pool", "7390128546", &ida_attr), value);
    // A share for nobody here, and garbage.
    let stranger = openssl_keypair(kernel.dir(), "stranger", 2048);
    let s = stdout(&cli_ok(
        &kernel,
        &[
            "zk",
            "share",
            "cred",
            "--index",
            "3",
            "--to-pem",
            path_str(&stranger.public_pem),
        ],
    ));
    let s = write(&ida, "stranger-share", s.trim().as_bytes());
    cli_err(
        &ida,
        &[
            "zk",
            "import",
            "ida-pool",
            "--with",
            "k22",
            "--in",
            path_str(&s),
            "--index",
            "3",
        ],
        ErrorCode::NotFound,
    );
    let g = write(&ida, "garbage", b"not.a.share");
    cli_err(
        &ida,
        &[
            "zk",
            "import",
            "ida-pool",
            "--with",
            "k22",
            "--in",
            path_str(&g),
            "--index",
            "3",
        ],
        ErrorCode::BadRequest,
    );
    // A segment for our thumbprint that does not decrypt: integrity.
    let mut bad = b64url_decode(j["share"].as_str().unwrap());
    bad[100] ^= 1;
    let b = write(&ida, "bad-share", b64url(&bad).as_bytes());
    cli_err(
        &ida,
        &[
            "zk",
            "import",
            "ida-pool",
            "--with",
            "k22",
            "--in",
            path_str(&b),
            "--index",
            "4",
        ],
        ErrorCode::Integrity,
    );
    assert_eq!(cli_json(&ida, &["zk", "show", "ida-pool"])["size"], 1);
}

#[test]
fn master_rotation_interrupted_by_kill_9_loses_nothing() {
    let mut d = hsm_daemon();
    let p = pool(&d, "cred", "k9", 10_000, &[]);
    assert_eq!(p["size"], 10_000);
    let value = b"kept across rotations".to_vec();
    let before: Vec<(Json, PathBuf)> = (0..40)
        .map(|_| encrypt(&d, "cred", "1234", &value))
        .collect();
    // How long one uninterrupted rotation takes here bounds the kill delays.
    let t0 = std::time::Instant::now();
    let full = cli_json(&d, &["zk", "rotate-master", "cred"]);
    let took = t0.elapsed();
    assert_eq!(full["rewrapped"], 10_000, "{full}");
    assert_eq!(
        full["masters"],
        serde_json::json!([{"version": 2, "keys": 10000}]),
        "{full}"
    );
    let mut interrupted = 0;
    for trial in 0..12 {
        let delay = Duration::from_millis(
            u64::from(u16::from_be_bytes([random(1)[0], random(1)[0]]))
                % (took.as_millis() as u64 + 50),
        );
        let mut child = d
            .cli_command(&["zk", "rotate-master", "cred"])
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        d.kill();
        let _ = child.wait();
        d.restart();
        let s = cli_json(&d, &["zk", "show", "cred", "--verify"]);
        assert_eq!(s["verified"], 10_000, "trial {trial}: {s}");
        assert_eq!(s["failed"], serde_json::json!([]), "trial {trial}: {s}");
        assert_eq!(s["size"], 10_000, "trial {trial}: {s}");
        if s["rotating_to"].is_number() || s["masters"].as_array().unwrap().len() > 1 {
            interrupted += 1;
        }
        for (_, attr) in before.iter().step_by(8) {
            assert_eq!(decrypt(&d, "cred", "1234", attr), value, "trial {trial}");
        }
        // Running it again finishes (or makes a complete new rotation).
        let done = cli_json(&d, &["zk", "rotate-master", "cred"]);
        assert!(done.get("rotating_to").is_none(), "trial {trial}: {done}");
        assert_eq!(
            done["masters"].as_array().unwrap().len(),
            1,
            "trial {trial}: {done}"
        );
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of 12 kills landed inside a rotation"
    );
    for (_, attr) in &before {
        assert_eq!(decrypt(&d, "cred", "1234", attr), value);
    }
}

#[test]
fn adopted_mosip_k9_and_export_keep_mosip_data_decrypting() {
    let mut d = DaemonBuilder::new().with_hsm().prepare();
    let hsm = d.hsm().unwrap().clone();
    // MOSIP's K9 and a partner key, made outside custodyd.
    let k9 = random(32);
    let k9_file = write(&d, "k9.bin", &k9);
    hsm.write_key(&k9_file, "secrkey", "mosip-k9", "0909", false);
    let loose = write(&d, "loose.bin", &random(32));
    hsm.write_key(&loose, "secrkey", "loose-aes", "0a0a", true);
    let partner = openssl_keypair(d.dir(), "partner", 2048);
    let der = d.dir().join("partner.key.der");
    let o = std::process::Command::new("openssl")
        .args([
            "pkey",
            "-in",
            path_str(&partner.key),
            "-outform",
            "der",
            "-out",
            path_str(&der),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    hsm.write_key(&der, "privkey", "mosip-partner", "0b0b", false);
    d.spawn();
    d.wait_ready(custody_testkit::READY_TIMEOUT);

    let k = cli_json(
        &d,
        &[
            "keys", "adopt", "k9", "--kind", "aes256", "--label", "mosip-k9",
        ],
    );
    assert_eq!(k["versions"][0]["adopted"], true, "{k}");
    assert_eq!(k["backend"], "pkcs11", "{k}");
    cli_err(
        &d,
        &[
            "keys", "adopt", "k9-again", "--kind", "aes256", "--id", "0909",
        ],
        ErrorCode::AlreadyExists,
    );
    let m = cli_err(
        &d,
        &[
            "keys",
            "adopt",
            "loose",
            "--kind",
            "aes256",
            "--label",
            "loose-aes",
        ],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("EXTRACTABLE"), "{m}");
    cli_err(
        &d,
        &[
            "keys", "adopt", "nothing", "--kind", "aes256", "--label", "no-such",
        ],
        ErrorCode::NotFound,
    );
    cli_err(
        &d,
        &[
            "keys",
            "adopt",
            "x",
            "--kind",
            "rsa2048-sign",
            "--label",
            "mosip-k9",
        ],
        ErrorCode::NotFound,
    );
    let pk = cli_json(
        &d,
        &[
            "keys",
            "adopt",
            "partner",
            "--kind",
            "rsa2048-oaep",
            "--id",
            "0b0b",
        ],
    );
    assert_eq!(pk["versions"][0]["adopted"], true, "{pk}");

    // MOSIP's pool: 25 keys wrapped under K9 by Python, data encrypted by Python.
    let keys: Vec<(u32, String)> = (0..25)
        .map(|i| (100 + i * 3, hex::encode(random(32))))
        .collect();
    let listing: String = keys.iter().map(|(i, k)| format!("{i} {k}\n")).collect();
    let listing = write(&d, "pool.txt", listing.as_bytes());
    let export = py_zk(&[
        "export",
        "--master",
        &hex::encode(&k9),
        "--pool",
        path_str(&listing),
    ]);
    let export = write(&d, "export.csv", &export.stdout);
    let value = b"legacy attribute".to_vec();
    let plain = write(&d, "plain", &value);
    let legacy = file(&d, "legacy.attr");
    py_zk(&[
        "encrypt",
        "--key",
        &keys[7].1,
        "--id",
        "UIN-5",
        "--index",
        &keys[7].0.to_string(),
        "--in",
        path_str(&plain),
        "--out",
        path_str(&legacy),
    ]);

    // A malformed export is refused with its line number; nothing imported.
    let mut bad = read(&export);
    bad.extend_from_slice(b"999,notbase64!\n");
    let bad = write(&d, "bad.csv", &bad);
    let m = cli_err(
        &d,
        &[
            "zk",
            "import-mosip",
            "mosip",
            "--master",
            "k9",
            "--in",
            path_str(&bad),
        ],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("line 27"), "{m}");
    cli_err(&d, &["zk", "show", "mosip"], ErrorCode::NotFound);

    let r = cli_json(
        &d,
        &[
            "zk",
            "import-mosip",
            "mosip",
            "--master",
            "k9",
            "--in",
            path_str(&export),
        ],
    );
    assert_eq!(r["rows"], 25, "{r}");
    assert_eq!(r["imported"], 25, "{r}");
    assert_eq!(decrypt(&d, "mosip", "UIN-5", &legacy), value);
    let again = cli_json(
        &d,
        &[
            "zk",
            "import-mosip",
            "mosip",
            "--master",
            "k9",
            "--in",
            path_str(&export),
        ],
    );
    assert_eq!(again["imported"], 0, "{again}");
    let s = cli_json(&d, &["zk", "show", "mosip", "--verify"]);
    assert_eq!(s["size"], 25, "{s}");
    assert_eq!(s["verified"], 25, "{s}");
    assert_eq!(s["min_index"], 100, "{s}");
    // New data under the taken-over pool, and K9 rotated (MOSIP could not): old data still opens.
    let (_, fresh) = encrypt(&d, "mosip", "UIN-6", &value);
    cli_json(&d, &["keys", "rotate", "k9"]);
    // K9 v1 still wraps the pool: it cannot be retired until the pool moved off it.
    let m = cli_err(
        &d,
        &["keys", "retire", "k9", "--version", "1"],
        ErrorCode::BadRequest,
    );
    assert!(m.contains("zk pool `mosip`"), "{m}");
    cli_json(&d, &["zk", "rotate-master", "mosip"]);
    cli_json(&d, &["keys", "retire", "k9", "--version", "1"]);
    cli_json(&d, &["keys", "retire", "k9", "--version", "2"]);
    assert_eq!(decrypt(&d, "mosip", "UIN-5", &legacy), value);
    assert_eq!(decrypt(&d, "mosip", "UIN-6", &fresh), value);

    // The adopted partner key opens shares addressed to it.
    let zkn = hex::encode(random(32));
    let s = py_zk(&[
        "share",
        "--key",
        &zkn,
        "--pub",
        path_str(&partner.public_pem),
    ]);
    let s = write(&d, "p-share", stdout(&s).trim().as_bytes());
    cli_ok(&d, &["zk", "init", "ida", "--master", "k9", "--size", "0"]);
    let j = cli_json(
        &d,
        &[
            "zk",
            "import",
            "ida",
            "--with",
            "partner",
            "--in",
            path_str(&s),
            "--index",
            "0",
        ],
    );
    assert_eq!(j["imported"], true, "{j}");
    let pa = file(&d, "p.attr");
    py_zk(&[
        "encrypt",
        "--key",
        &zkn,
        "--id",
        "VID",
        "--index",
        "0",
        "--in",
        path_str(&plain),
        "--out",
        path_str(&pa),
    ]);
    assert_eq!(decrypt(&d, "ida", "VID", &pa), value);

    // Destroying the adopted K9 version is refused while it wraps pool keys? It is current;
    // the token object of an adopted version is never destroyed by custodyd.
    cli_json(&d, &["keys", "rotate", "partner"]);
    cli_json(&d, &["keys", "destroy", "partner", "--version", "1"]);
    assert!(
        hsm.object_labels().iter().any(|l| l == "mosip-partner"),
        "{:?}",
        hsm.object_labels()
    );
}

/// With the optional pool key cache on (`[zk] cache_size`), attributes still round-trip, a
/// wrong id is still `integrity`, and a master rotation (new master version: new cache keys)
/// changes nothing for the caller.
#[test]
fn pool_key_cache_on_changes_nothing_for_callers() {
    let d = DaemonBuilder::new()
        .with_hsm()
        .extra("[zk]\ncache_size = 8\ncache_ttl_secs = 30\n")
        .start();
    pool(&d, "cred", "k9", 4, &[]);
    let value = b"cached".to_vec();
    let made: Vec<(Json, PathBuf)> = (0..12)
        .map(|_| encrypt(&d, "cred", "UIN-1", &value))
        .collect();
    for (_, attr) in &made {
        assert_eq!(decrypt(&d, "cred", "UIN-1", attr), value);
        decrypt_err(&d, "cred", "UIN-2", &read(attr), ErrorCode::Integrity);
    }
    cli_json(&d, &["zk", "rotate-master", "cred"]);
    for (_, attr) in &made {
        assert_eq!(decrypt(&d, "cred", "UIN-1", attr), value);
    }
}
