//! The stop signal a server's tasks share: set once (SIGTERM, SIGINT, a test's stop),
//! seen by every clone. A task waits on it beside its work (`select!`), or asks whether
//! it is set.

use tokio::sync::watch;

/// What a task waits on to stop. Clones see the same signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Sets the [`Shutdown`] signal of its [`Shutdown::new`] pair.
#[derive(Debug)]
pub struct Stop(watch::Sender<bool>);

impl Shutdown {
    /// A signal not set yet, and what sets it.
    pub fn new() -> (Stop, Shutdown) {
        let (stop, signal) = watch::channel(false);
        (Stop(stop), Shutdown(signal))
    }

    /// Resolves once the signal is set, or once its [`Stop`] is gone (no one is left to
    /// set it: its owner stopped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

impl Stop {
    /// Sets the signal; every task waiting on it goes on.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Another [`Shutdown`] of this signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}
