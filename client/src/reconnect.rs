//! A client that survives daemon restarts: it reconnects when the connection is gone and sends
//! again only what is safe to repeat ([`custody_proto::ops::RETRY_SAFE`]: reads, signatures,
//! decryptions and encryptions). An admin change whose answer was lost is returned as the error
//! it is: whether it happened is for the caller to check (`keys.show`, `zk.show`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_proto::ops::{Op, RETRY_SAFE};

use crate::{Client, ClientError};

/// How long a reconnection waits for the daemon to come back.
pub const RECONNECT_WAIT: Duration = Duration::from_secs(15);

/// A [`Client`] that reconnects; see the module documentation.
pub struct Reconnecting {
    path: PathBuf,
    server_uid: Option<u32>,
    current: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl ClientError {
    /// True when the connection is gone (the daemon closed it, restarted or is not there):
    /// what [`Reconnecting`] reconnects after.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Closed(_) => true,
            ClientError::Protocol(_) | ClientError::Server(_) => false,
        }
    }
}

impl Reconnecting {
    /// A client of the daemon at `path` (checked to run as `server_uid` when given); connects on
    /// first use.
    pub fn new(path: impl AsRef<Path>, server_uid: Option<u32>) -> Self {
        Reconnecting {
            path: path.as_ref().to_owned(),
            server_uid,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// The live connection, or a new one (retried while the daemon is restarting, up to
    /// [`RECONNECT_WAIT`]).
    async fn client(&self) -> Result<Arc<Client>, ClientError> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref() {
            return Ok(c.clone());
        }
        let started = Instant::now();
        loop {
            match Client::connect_checked(&self.path, self.server_uid).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    *cur = Some(c.clone());
                    return Ok(c);
                }
                Err(e) if e.is_connection_lost() && started.elapsed() < RECONNECT_WAIT => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn forget(&self, dead: &Arc<Client>) {
        let mut cur = self.current.lock().await;
        if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead)) {
            *cur = None;
        }
    }

    /// Sends `O`; after a lost connection, reconnects and sends it once more if `O` is safe to
    /// repeat.
    pub async fn call<O: Op>(&self, args: &O::Args) -> Result<O::Result, ClientError> {
        let c = self.client().await?;
        match c.call::<O>(args).await {
            Err(e) if e.is_connection_lost() => {
                self.forget(&c).await;
                if RETRY_SAFE.contains(&O::NAME) {
                    let c = self.client().await?;
                    c.call::<O>(args).await
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }
}
