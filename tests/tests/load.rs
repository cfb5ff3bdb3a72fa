//! Load through the daemon: 64 pipelining clients mixing sign, unwrap, envelope and keys.public
//! on four HSM sessions, and 64 concurrent TPM signers; every answer is checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_testkit::proto::ops::{
    names, OpenArgs, PlaintextResult, PublicKeyArgs, PublicKeyResult, SealArgs, SealResult,
    SignArgs, SignResult, UnwrapArgs,
};
use custody_testkit::*;

#[test]
fn load_64_clients_mixed_ops_with_four_sessions() {
    const CLIENTS: usize = 64;
    const OPS: usize = 500;
    const SAMPLES: usize = 8;
    let mut d = DaemonBuilder::new()
        .with_hsm()
        .pkcs11(&["max_sessions = 4"])
        .start();
    assert!(d.config_text().contains("max_sessions = 4"));
    create_pkcs11(&d, "load-sign", "rsa2048-sign");
    create_pkcs11(&d, "load-enc", "rsa2048-oaep");
    let t_enc = thumb(&d, "load-enc", 1);
    let t_sign = thumb(&d, "load-sign", 1);
    let pem_enc = pem(&d, "load-enc", 1);

    // Fixtures: wrapped data keys (openssl), envelopes, reference PKCS#1 v1.5 signatures.
    let mut wrapped = Vec::new();
    let mut envelopes = Vec::new();
    let mut signatures = Vec::new();
    for i in 0..SAMPLES {
        let dk = random(32);
        let ct = openssl_oaep_encrypt(&pem_enc, &dk, "sha256", None);
        wrapped.push(([t_enc.clone(), ct].concat(), dk));
        let plain = random(64 * i + 1);
        let f = write(&d, &format!("plain{i}"), &plain);
        let ef = file(&d, &format!("env{i}"));
        cli_ok(
            &d,
            &[
                "envelope",
                "seal",
                "load-enc",
                "--in",
                path_str(&f),
                "--out",
                path_str(&ef),
            ],
        );
        envelopes.push((read(&ef), plain));
        let msg = format!("message {i}").into_bytes();
        let mf = write(&d, &format!("msg{i}"), &msg);
        let sf = file(&d, &format!("sig{i}"));
        cli_ok(
            &d,
            &[
                "sign",
                "load-sign",
                "--in",
                path_str(&mf),
                "--out",
                path_str(&sf),
            ],
        );
        signatures.push((msg, read(&sf)));
    }
    let fixtures = Arc::new((wrapped, envelopes, signatures, t_enc, t_sign));

    let socket = d.socket().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let (done, errors) = rt.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for c in 0..CLIENTS {
            let socket = socket.clone();
            let fx = fixtures.clone();
            set.spawn(async move {
                let (wrapped, envelopes, signatures, t_enc, t_sign) = &*fx;
                let client = Client::connect(&socket).await.expect("connect");
                let mut errors: Vec<String> = Vec::new();
                let mut done = 0usize;
                for i in 0..OPS {
                    let j = (c + i) % SAMPLES;
                    let what = (c * 7 + i) % 6;
                    let r: Result<(), String> = match what {
                        0 => {
                            let (msg, sig) = &signatures[j];
                            let args = SignArgs {
                                key: "load-sign".into(),
                                data: Some(msg.clone()),
                                ..Default::default()
                            };
                            match client
                                .call_untyped::<_, SignResult>(names::SIGN, &args)
                                .await
                            {
                                Ok(r) if &r.signature == sig => Ok(()),
                                Ok(_) => Err("sign: different signature".into()),
                                Err(e) => Err(format!("sign: {e}")),
                            }
                        }
                        1 => {
                            let args = SignArgs {
                                key: "load-sign".into(),
                                digest: Some(sha256(&signatures[j].0).to_vec()),
                                scheme: Some("pss".into()),
                                ..Default::default()
                            };
                            match client
                                .call_untyped::<_, SignResult>(names::SIGN, &args)
                                .await
                            {
                                Ok(r) if r.signature.len() == 256 => Ok(()),
                                Ok(_) => Err("sign pss: bad length".into()),
                                Err(e) => Err(format!("sign pss: {e}")),
                            }
                        }
                        2 => {
                            let (w, dk) = &wrapped[j];
                            let args = UnwrapArgs {
                                key: "load-enc".into(),
                                wrapped: w.clone(),
                                thumbprint: None,
                                version: None,
                            };
                            match client
                                .call_untyped::<_, PlaintextResult>(names::UNWRAP, &args)
                                .await
                            {
                                Ok(r) if &r.plaintext == dk => Ok(()),
                                Ok(_) => Err("unwrap: wrong data key".into()),
                                Err(e) => Err(format!("unwrap: {e}")),
                            }
                        }
                        3 => {
                            let args = SealArgs {
                                key: Some("load-enc".into()),
                                public_key: None,
                                plaintext: format!("{c}/{i}").into_bytes(),
                            };
                            match client
                                .call_untyped::<_, SealResult>(names::ENVELOPE_SEAL, &args)
                                .await
                            {
                                Ok(r)
                                    if &r.thumbprint == t_enc
                                        && &r.envelope[6..38] == t_enc.as_slice() =>
                                {
                                    Ok(())
                                }
                                Ok(_) => Err("seal: wrong thumbprint".into()),
                                Err(e) => Err(format!("seal: {e}")),
                            }
                        }
                        4 => {
                            let (env, plain) = &envelopes[j];
                            let args = OpenArgs {
                                key: "load-enc".into(),
                                envelope: env.clone(),
                            };
                            match client
                                .call_untyped::<_, PlaintextResult>(names::ENVELOPE_OPEN, &args)
                                .await
                            {
                                Ok(r) if &r.plaintext == plain => Ok(()),
                                Ok(_) => Err("open: wrong plaintext".into()),
                                Err(e) => Err(format!("open: {e}")),
                            }
                        }
                        _ => {
                            let args = PublicKeyArgs {
                                name: "load-sign".into(),
                                version: None,
                                format: None,
                            };
                            match client
                                .call_untyped::<_, PublicKeyResult>(names::KEYS_PUBLIC, &args)
                                .await
                            {
                                Ok(r) if &r.thumbprint == t_sign => Ok(()),
                                Ok(_) => Err("keys.public: wrong thumbprint".into()),
                                Err(e) => Err(format!("keys.public: {e}")),
                            }
                        }
                    };
                    match r {
                        Ok(()) => done += 1,
                        Err(e) => errors.push(format!("client {c} op {i}: {e}")),
                    }
                }
                (done, errors)
            });
        }
        let mut done = 0;
        let mut errors = Vec::new();
        while let Some(r) = set.join_next().await {
            let (n, e) = r.expect("client task panicked");
            done += n;
            errors.extend(e);
        }
        (done, errors)
    });
    let elapsed = started.elapsed();
    eprintln!(
        "load: {CLIENTS} clients x {OPS} ops = {} ops in {elapsed:.1?} ({:.0} ops/s), {} errors",
        CLIENTS * OPS,
        (CLIENTS * OPS) as f64 / elapsed.as_secs_f64(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert_eq!(done, CLIENTS * OPS);
    assert!(elapsed < Duration::from_secs(90), "load took {elapsed:?}");

    let err = d.stderr();
    assert!(!err.contains("CKR_SESSION_COUNT"), "session count exceeded");
    assert!(!err.contains("SessionCount"), "session count exceeded");
    let b = status_backend(&d, "pkcs11");
    assert_eq!(b["ok"], true, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("/4 sessions open"),
        "max_sessions = 4 in force: {b}"
    );
    let s = cli_json(&d, &["status"]);
    assert!(
        s["ops"]["sign"]["ok"].as_u64().unwrap() >= (CLIENTS * OPS / 3) as u64,
        "{s}"
    );
    assert_eq!(s["ops"]["sign"]["err"], 0, "{s}");
    assert_eq!(s["ops"]["unwrap"]["err"], 0, "{s}");
    assert_eq!(s["ops"]["envelope.open"]["err"], 0, "{s}");
    d.assert_running();
    assert_no_pin(&d, &[]);
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn sixty_four_concurrent_signers() {
    const THREADS: usize = 64;
    const PER: usize = 3;
    let mut d = tpm_daemon();
    let key = rsa_public(&d.client(), "machine-sign");
    let socket = d.socket().to_path_buf();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let socket = socket.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let c = BlockingClient::connect(&socket).expect("connect");
                barrier.wait();
                (0..PER)
                    .map(|i| {
                        let data = format!("thread {t} message {i}").into_bytes();
                        let r: SignResult = c
                            .call_untyped(
                                names::SIGN,
                                &SignArgs {
                                    key: "machine-sign".into(),
                                    data: Some(data.clone()),
                                    ..Default::default()
                                },
                            )
                            .unwrap_or_else(|e| panic!("thread {t} sign {i}: {e}"));
                        (data, r.signature)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut n = 0;
    for h in handles {
        for (data, sig) in h.join().expect("signer thread") {
            verify_pkcs1(&key, &sha256(&data), &sig);
            n += 1;
        }
    }
    assert_eq!(n, THREADS * PER);
    let s = status_json(&d);
    assert!(
        s["ops"]["sign"]["ok"].as_u64().unwrap() >= (THREADS * PER) as u64,
        "{s}"
    );
    assert_eq!(s["ops"]["sign"]["err"].as_u64().unwrap_or(0), 0, "{s}");
    assert_eq!(d.terminate().code(), Some(0));
}
