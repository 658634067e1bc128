//! The test broker: `tansu` on a free loopback port (see `sagalog_testkit::process`).

pub use sagalog_testkit::process::Tansu;
