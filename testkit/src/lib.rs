//! sagalog-testkit: what every test that drives sagalog from outside shares — and the
//! load generator with them.
//!
//! - [`process`]: the real `sagalog serve` binary on a free loopback port, and the real
//!   Kafka-protocol broker (`tansu`) the Kafka tests use.
//! - [`client`]: a small HTTP/1.1 keep-alive client.
//! - [`wait`]: waiting for a condition, bounded by a deadline, failing with what was
//!   awaited and what was seen.
//! - [`free_port`], [`free_port_on`]: a loopback port nothing listens on.

pub mod client;
pub mod process;
pub mod wait;

pub use wait::{wait_until, wait_until_blocking};

/// A port of 127.0.0.1 that was free a moment ago (the kernel's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A port free a moment ago on every one of `hosts` (loopback addresses such as
/// `127.0.1.1`, one per pod): the kernel's pick on 127.0.0.1, tried on the others.
pub fn free_port_on(hosts: &[String]) -> u16 {
    const TRIES: usize = 100;
    for _ in 0..TRIES {
        let port = free_port();
        let free = hosts
            .iter()
            .all(|host| std::net::TcpListener::bind(format!("{host}:{port}")).is_ok());
        if free {
            return port;
        }
    }
    panic!("no port free on every one of {hosts:?} in {TRIES} tries");
}
