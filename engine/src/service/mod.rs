//! The engine service: the [`Engine`](engine::Engine) façade over the parts that keep
//! sagas running on a data directory.
//!
//! - `engine`: the façade — open, the API, stats, close.
//! - `inner`: what the parts share, with the lock order and the owner of each field.
//! - `active` and `table`: the sagas in memory, in shards.
//! - `transaction`: deciding an input, the durable append, installing the result;
//!   `effects`: what an installed result changes besides the saga.
//! - `finished`: reading sagas back (views, history, finished sagas from the log).
//! - `progress`: the indexer's watermark and what waits for it; `timers`: due times;
//!   `background`: the indexer and timer threads.
//! - `snapshots`, `capture` and `replay`: snapshot bookkeeping, taking one, and
//!   rebuilding the state on open.
//! - `retention`, `list`, `feed`: deleting old segments, listing sagas, and what
//!   adapters read besides the API (commands, cursors, the log's health).
//! - `indexing` (the sled layout and the indexer's batches), `bloom` (the filter of
//!   finished ids), `projection` (status counts and per-type counters) and
//!   `dead_letters` (commands the relay gave up on); `delivery`: pausing and resuming
//!   command delivery.
//!
//! Threads and runtimes: the API runs on the caller's tokio runtime; blocking work
//! (listing, capturing a snapshot) goes to its blocking pool. The indexer and the timer
//! run on threads of their own (`background`); the log's writer and syncer are the
//! storage crate's.

pub(crate) mod active;
mod background;
mod bloom;
mod capture;
pub(crate) mod dead_letters;
pub(crate) mod delivery;
mod effects;
pub(crate) mod engine;
pub(crate) mod feed;
mod finished;
pub(crate) mod indexing;
pub(crate) mod inner;
pub(crate) mod list;
mod progress;
pub(crate) mod projection;
pub(crate) mod replay;
pub(crate) mod retention;
mod snapshots;
mod table;
mod timers;
mod transaction;
