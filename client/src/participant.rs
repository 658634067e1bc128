//! The participant loop: follow one topic on the outbox, handle each command once,
//! reply, remember the position.
//!
//! Delivery is at least once, so the runner drops a command whose `event_id` it handled
//! recently (a bounded set), and replies carry an `event_id` made from the command's, so
//! a command handled again after a restart replies with the same id and gets the first
//! answer. The position (the outbox's `next_after`) is stored only once every command
//! before it was replied to, atomically (a new file renamed over the old), so a crash
//! repeats work rather than skip it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;

use crate::types::{Action, After, Command, OutboxQuery, Outcome, Position, Reply};
use crate::{Client, Error};

/// What a handler made of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// Done (`succeeded`, or `compensated` for a compensation), with data (a JSON
    /// object): a success's is what later steps get in `results`; a compensation's is
    /// kept in the saga's history.
    Done(Option<Value>),
    /// Could not do it (`failed`, or `compensation_failed`), with why; the saga retries
    /// per its definition.
    Failed(String),
    /// Not this participant's to answer (another service shares the topic): no reply.
    Skip,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commands handed to the handler.
    pub handled: u64,
    /// Deliveries dropped as duplicates.
    pub duplicates: u64,
    /// Replies the server refused as not fitting the saga (`409`: a stale attempt, a
    /// finished saga); the saga had moved on.
    pub stale: u64,
    /// Commands the handler left alone ([`Handled::Skip`]).
    pub skipped: u64,
    /// Replies the server refused as malformed or too large (`4xx` but `409`): logged,
    /// and the runner goes on (the saga's timeout retries the step).
    pub refused: u64,
}

/// How long a stop waits for the replies of a page being handled.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How handling a page ended.
#[derive(Debug, PartialEq, Eq)]
enum Page {
    /// Every command was handled and replied to.
    Done,
    /// The same, and a stop came meanwhile.
    DoneStopping,
    /// A stop cut it short: its position must not be stored.
    Cut,
}

/// Recent `event_id`s handled, at most `capacity` of them.
pub(crate) struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Seen {
    pub(crate) fn new(capacity: usize) -> Seen {
        Seen {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Notes `id`; false when it was seen already.
    pub(crate) fn first(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// One participant service's loop over its topic. Build it with [`Participant::new`],
/// set what differs from the defaults, then [`Participant::run`].
pub struct Participant {
    pub(crate) client: Client,
    pub(crate) service: String,
    pub(crate) topic: String,
    share: Option<(u32, u32)>,
    position_file: Option<PathBuf>,
    from_latest: bool,
    concurrency: usize,
    wait: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) seen_capacity: usize,
}

impl Participant {
    /// The participant `service` (its name goes into its replies' `event_id`s) for the
    /// commands to `topic`.
    pub fn new(client: Client, service: &str, topic: &str) -> Participant {
        Participant {
            client,
            service: service.to_string(),
            topic: topic.to_string(),
            share: None,
            position_file: None,
            from_latest: false,
            concurrency: 16,
            wait: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            seen_capacity: 100_000,
        }
    }

    /// This replica is member `member` of `members` sharing the topic: it gets the
    /// commands of its share of the sagas (each saga's always to the same member).
    pub fn member(mut self, member: u32, members: u32) -> Participant {
        self.share = Some((members, member));
        self
    }

    /// Keep the position in this file: a restart resumes there. Without one, a run
    /// starts from the log's start (or the end, with [`Participant::from_latest`]).
    pub fn position_file(mut self, path: impl AsRef<Path>) -> Participant {
        self.position_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// With no stored position, start at the end of the log: only commands issued from
    /// now on.
    pub fn from_latest(mut self) -> Participant {
        self.from_latest = true;
        self
    }

    /// Commands handled at once (of different sagas: a saga has one command at a
    /// time). Default 16.
    pub fn concurrency(mut self, n: usize) -> Participant {
        self.concurrency = n.max(1);
        self
    }

    /// How long one long poll waits for a command (at most 30 s). Default 10 s.
    pub fn poll_wait(mut self, wait: Duration) -> Participant {
        self.wait = wait.min(Duration::from_secs(30));
        self
    }

    /// How many recent `event_id`s are remembered to drop duplicates. Default 100,000.
    pub fn remember(mut self, event_ids: usize) -> Participant {
        self.seen_capacity = event_ids;
        self
    }

    /// Runs until `stop` completes (the command being handled is finished and replied
    /// to, and the position stored), or an error that retrying cannot cure (the
    /// position file cannot be written, a request the server refuses as malformed).
    pub async fn run<H, F>(self, handler: H, stop: impl Future<Output = ()>) -> Result<Stats, Error>
    where
        H: Fn(Command) -> F + Send + Sync + 'static,
        F: Future<Output = Handled> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut stop = pin!(stop);
        let mut after = match self.load_position()? {
            Some(after) => After::from(after),
            None if self.from_latest => After::Latest,
            None => After::Start,
        };
        let mut seen = Seen::new(self.seen_capacity);
        let mut stats = Stats::default();
        let mut backoff = Backoff::new(self.max_backoff);
        loop {
            let query = OutboxQuery {
                topics: vec![self.topic.clone()],
                after: after.clone(),
                limit: Some((self.concurrency * 4).min(1000) as u32),
                wait_ms: self.wait.as_millis() as u64,
                share: self.share,
            };
            let page = tokio::select! {
                page = self.client.outbox(&query) => page,
                () = &mut stop => return Ok(stats),
            };
            let page = match page {
                Ok(page) => page,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "reading the outbox; trying again");
                    tokio::select! {
                        () = backoff.wait(&e) => continue,
                        () = &mut stop => return Ok(stats),
                    }
                }
                Err(e) => return Err(e),
            };
            backoff.reset();
            let fresh: Vec<Command> = page
                .items
                .into_iter()
                .filter(|c| {
                    let first = seen.first(&c.event_id);
                    stats.duplicates += u64::from(!first);
                    first
                })
                .collect();
            // A page is finished before a stop returns, unless its replies cannot go
            // out within the grace: then its position is not stored, and it is read
            // again next time.
            let handled = self
                .handle_page(&handler, fresh, &mut stats, &mut stop)
                .await?;
            if handled == Page::Cut {
                return Ok(stats);
            }
            after = match page.next_after {
                Some(next) if After::from(next.clone()) != after => {
                    self.store_position(&next)?;
                    After::from(next)
                }
                // `latest` on an empty log: there is no offset to stand on yet, and
                // what is appended next is at the start.
                None if after == After::Latest => After::Start,
                _ => after,
            };
            // (A stop seen while handling is done: it is not asked again.)
            if handled == Page::DoneStopping || futures_ready(&mut stop) {
                return Ok(stats);
            }
        }
    }

    /// Handles the commands of one page and replies to each: a saga's commands one after
    /// another in log order (an attempt, the next one, then its compensation must not
    /// run at once), `concurrency` sagas at a time. After `stop`, it waits for what is
    /// running at most [`STOP_GRACE`] and starts nothing new.
    async fn handle_page<H, F>(
        &self,
        handler: &Arc<H>,
        commands: Vec<Command>,
        stats: &mut Stats,
        stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Page, Error>
    where
        H: Fn(Command) -> F + Send + Sync + 'static,
        F: Future<Output = Handled> + Send + 'static,
    {
        let mut sagas: Vec<Vec<Command>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for command in commands {
            let at = *index.entry(command.saga_id.clone()).or_insert_with(|| {
                sagas.push(Vec::new());
                sagas.len() - 1
            });
            sagas[at].push(command);
        }
        let mut running = JoinSet::new();
        let mut sagas = sagas.into_iter();
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            while grace.is_none() && running.len() < self.concurrency {
                let Some(commands) = sagas.next() else {
                    break;
                };
                let (handler, client) = (handler.clone(), self.client.clone());
                let (service, max_backoff) = (self.service.clone(), self.max_backoff);
                running.spawn(async move {
                    let mut sent = Vec::with_capacity(commands.len());
                    for command in commands {
                        let handled = handler(command.clone()).await;
                        sent.push(
                            send_reply(&client, &service, &command, handled, max_backoff).await,
                        );
                    }
                    sent
                });
            }
            let done = tokio::select! {
                done = running.join_next() => done,
                () = stop.as_mut(), if grace.is_none() => {
                    grace = Some(tokio::time::Instant::now() + STOP_GRACE);
                    continue;
                }
                () = tokio::time::sleep_until(grace.unwrap_or_else(tokio::time::Instant::now)), if grace.is_some() => {
                    tracing::warn!(running = running.len(), "stopping: replies still going out after the grace; this page is read again next time");
                    running.abort_all();
                    return Ok(Page::Cut);
                }
            };
            let Some(done) = done else {
                return Ok(match grace {
                    None => Page::Done,
                    Some(_) if sagas.as_slice().is_empty() => Page::DoneStopping,
                    Some(_) => Page::Cut,
                });
            };
            let sent = done
                .map_err(|panicked| Error::Transport(format!("a handler panicked: {panicked}")))?;
            for sent in sent {
                stats.handled += 1;
                match sent {
                    Sent::Accepted => {}
                    Sent::Stale => stats.stale += 1,
                    Sent::Skipped => stats.skipped += 1,
                    Sent::Refused => stats.refused += 1,
                }
            }
        }
    }

    fn load_position(&self) -> Result<Option<Position>, Error> {
        let Some(path) = &self.position_file else {
            return Ok(None);
        };
        let failed = |source| Error::Position {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Err(failed(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is empty, not an outbox position",
            ))),
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    /// Stores `after` durably: a new file, synced, renamed over the old.
    fn store_position(&self, after: &Position) -> Result<(), Error> {
        let Some(path) = &self.position_file else {
            return Ok(());
        };
        let failed = |source| Error::Position {
            path: path.clone(),
            source,
        };
        let new = path.with_extension("new");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&new)?;
            std::io::Write::write_all(&mut file, after.to_string().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&new, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(failed)
    }
}

/// Whether `stop` has completed, without waiting for it.
pub(crate) fn futures_ready(stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    stop.as_mut().poll(&mut cx).is_ready()
}

pub(crate) enum Sent {
    Accepted,
    /// The saga did not want it any more (`409`).
    Stale,
    /// The handler left it alone.
    Skipped,
    /// The server refused the reply (a `4xx` other than `409`).
    Refused,
}

/// Replies to `command` with what its handler made of it, retrying while the server is
/// busy or away. A success whose data the server refuses as too large (`413`) is
/// reported as a failure instead, so the saga retries or compensates; any other refusal
/// is logged and counted, and the runner goes on.
pub(crate) async fn send_reply(
    client: &Client,
    service: &str,
    command: &Command,
    handled: Handled,
    max_backoff: Duration,
) -> Sent {
    let (outcome, data, reason) = match (command.action, handled) {
        (_, Handled::Skip) => return Sent::Skipped,
        (Action::Execute, Handled::Done(data)) => (Outcome::Succeeded, data, None),
        (Action::Execute, Handled::Failed(why)) => (Outcome::Failed, None, Some(why)),
        (Action::Compensate, Handled::Done(data)) => (Outcome::Compensated, data, None),
        (Action::Compensate, Handled::Failed(why)) => {
            (Outcome::CompensationFailed, None, Some(why))
        }
    };
    let mut reply = Reply {
        data,
        reason,
        ..Reply::to(command, service, outcome)
    };
    let mut backoff = Backoff::new(max_backoff);
    loop {
        match client.reply(&command.saga_id, &reply).await {
            Ok(_) => return Sent::Accepted,
            Err(e) if e.status() == Some(409) => {
                tracing::info!(saga_id = %command.saga_id, event_id = %command.event_id, error = %e,
                    "the saga no longer waits for this reply");
                return Sent::Stale;
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(saga_id = %command.saga_id, error = %e, "replying; trying again");
                backoff.wait(&e).await;
            }
            Err(e) if e.status() == Some(413) && reply.outcome == Outcome::Succeeded => {
                tracing::warn!(saga_id = %command.saga_id, error = %e,
                    "the server refused the step's data; reporting the step failed");
                reply = Reply {
                    event_id: format!("{}:too-large", reply.event_id),
                    outcome: Outcome::Failed,
                    data: None,
                    reason: Some(format!("the step's data was refused: {e}")),
                    ..reply
                };
            }
            Err(e) => {
                tracing::error!(saga_id = %command.saga_id, event_id = %command.event_id, error = %e,
                    "the server refused the reply; going on without it");
                return Sent::Refused;
            }
        }
    }
}

/// Waits between tries: doubling from 100 ms up to a cap, or what `Retry-After` says.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    pub(crate) fn new(max: Duration) -> Backoff {
        Backoff {
            next: Backoff::FIRST,
            max: max.max(Backoff::FIRST),
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }

    pub(crate) async fn wait(&mut self, error: &Error) {
        let asked = match error {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        };
        let wait = asked.unwrap_or(self.next).min(self.max);
        self.next = (self.next * 2).min(self.max);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_drops_repeats_and_forgets_the_oldest_past_its_bound() {
        let mut seen = Seen::new(2);
        assert!(seen.first("a"));
        assert!(!seen.first("a"));
        assert!(seen.first("b"));
        assert!(seen.first("c"));
        assert!(seen.first("a"), "a was forgotten");
        assert_eq!(seen.order.len(), 2);
    }

    #[test]
    fn the_position_survives_in_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new("127.0.0.1:9".parse().unwrap());
        let p = Participant::new(client, "svc", "t").position_file(dir.path().join("pos"));
        assert_eq!(p.load_position().unwrap(), None);
        p.store_position(&Position::Offset(41)).unwrap();
        assert_eq!(p.load_position().unwrap(), Some(Position::Offset(41)));
        // A partitioned server's cursor is kept as the text it sent.
        let cursor = Position::Cursor("c.12.n.7".into());
        p.store_position(&cursor).unwrap();
        assert_eq!(p.load_position().unwrap(), Some(cursor));
        std::fs::write(dir.path().join("pos"), " \n").unwrap();
        assert!(matches!(p.load_position(), Err(Error::Position { .. })));
    }
}
