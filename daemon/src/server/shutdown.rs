//! Shutdown signalling: one sender, many listeners; each connection holds a guard so the server
//! knows when the last one has drained.

use tokio::sync::{broadcast, mpsc};

/// Listens for the shutdown signal; cheap to clone via [`Shutdown::subscribe`].
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
    _guard: mpsc::Sender<()>,
}

impl Shutdown {
    /// Wraps a receiver and a drain guard.
    pub fn new(notify: broadcast::Receiver<()>, guard: mpsc::Sender<()>) -> Self {
        Shutdown {
            is_shutdown: false,
            notify,
            _guard: guard,
        }
    }

    /// Waits for the signal (returns at once if already received).
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}
