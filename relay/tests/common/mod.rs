//! The test broker: `tansu` on a free loopback port (see `sagalog_benches::process`).

pub use sagalog_benches::process::Tansu;
