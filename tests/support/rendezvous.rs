//! A two-party meeting point for negative controls that must make two calls overlap.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Two callers meet here once: the first waits (up to 10 s) for the second, so both are
/// inside their read-then-write before either writes. Later callers pass straight through.
#[derive(Default)]
pub struct Rendezvous {
    arrived: Mutex<u32>,
    met: Condvar,
}

impl Rendezvous {
    /// Waits for the other caller of the pair (or passes, once both have met).
    pub fn meet(&self) {
        let mut arrived = self.arrived.lock().unwrap();
        if *arrived >= 2 {
            return;
        }
        *arrived += 1;
        self.met.notify_all();
        let _met = self
            .met
            .wait_timeout_while(arrived, Duration::from_secs(10), |arrived| *arrived < 2)
            .unwrap();
    }
}
