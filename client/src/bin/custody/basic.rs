//! `ping` and `status`.

use std::time::Instant;

use clap::Subcommand;
use custody_client::proto::ops::{PingArgs, StatusArgs};
use custody_client::{BlockingClient, ClientError};
use serde_json::json;

use crate::{Failure, Out};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Check that the daemon answers.
    Ping,
    /// Daemon version, uptime, backend health and per-op counters.
    Status,
}

pub fn run(c: &BlockingClient, json: bool, cmd: Cmd) -> Out {
    match cmd {
        Cmd::Ping => ping(c, json),
        Cmd::Status => status(c, json),
    }
}

fn ping(c: &BlockingClient, json: bool) -> Out {
    let t = Instant::now();
    let r = c.ping(&PingArgs {
        data: b"ping".to_vec(),
    })?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if r.data != b"ping" {
        return Err(Failure::Client(ClientError::Protocol(
            "ping echo mismatch".into(),
        )));
    }
    let server = &c.inner().server_hello().server;
    if json {
        println!("{}", json!({"pong": true, "server": server, "rtt_ms": ms}));
    } else {
        println!("pong from {server} in {ms:.2} ms");
    }
    Ok(())
}

fn status(c: &BlockingClient, json: bool) -> Out {
    let s = c.status(&StatusArgs {})?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    println!("{} (protocol {})", s.server, s.protocol);
    println!("uptime {}s, {} connection(s)", s.uptime_secs, s.connections);
    for b in &s.backends {
        println!(
            "backend {:<8} {}  {}",
            b.name,
            if b.ok { "ok  " } else { "DOWN" },
            b.detail
        );
    }
    for (op, n) in &s.ops {
        println!("op {op:<14} ok {:>8}  err {:>6}", n.ok, n.err);
    }
    Ok(())
}
