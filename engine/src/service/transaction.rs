//! The transaction: how one input becomes durable records and the saga's new state.
//!
//! An input is decided under its shard's lock, which is held for microseconds and
//! never across I/O: when deciding needs the log (the first answer to a repeated
//! reply's event id) or the index (a saga not in memory that may have finished), the
//! locked step says so (`Step::Read`), `transact` reads without the lock and decides
//! again, re-checking that what it read still holds (the saga's last offset; the
//! shard's count of sagas that left memory). After a few such rounds it reads under
//! the lock, so a decision always ends. The saga is then marked busy, the records are
//! appended, and the durable wait happens with no lock held but the snapshot gate
//! (shared), so one group commit carries many sagas' records. A second input for a
//! busy saga waits for the first to be durable (a saga's records are decided one input
//! at a time); other sagas never wait. The new state is installed only once the
//! records are durable: a failed append changes nothing.
//!
//! Cancel-safety: a caller dropped before its records reach the writer releases the
//! saga (`Release`); one dropped after hands the durable wait and the install to a task
//! (`Finishing`), since the records will be durable either way.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::history::saga_history;
use crate::model::decider::{decide_and_apply, same_reply, Input, Rejection, Reply};
use crate::model::definition::Definition;
use crate::model::record::{encode_saga_record, Link, Record, Status};
use crate::model::state::SagaState;
use crate::service::active::{Shard, Summary};
use crate::service::indexing::SagaMeta;
use crate::service::inner::Inner;
use crate::service::table::{event_bits, fnv1a};
use crate::service::table::{SagaTable, Slot};

/// The first answer to a reply, found in the saga's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventAnswer {
    pub offset: u64,
    pub status: Status,
}

/// An input to decide, and for a start the definition the new saga runs on.
pub(crate) struct Op {
    pub input: Input,
    pub definition: Option<Arc<Definition>>,
    /// The saga id was made here for this start: no finished saga can have it.
    pub fresh_id: bool,
    /// Decide only if the saga's last record is from this unix ms or before (checked
    /// under its lock): a bulk action's sagas as they were when it looked.
    pub unchanged_since_ms: Option<u64>,
}

impl From<Input> for Op {
    fn from(input: Input) -> Op {
        Op {
            input,
            definition: None,
            fresh_id: false,
            unchanged_since_ms: None,
        }
    }
}

impl Op {
    /// The definition and request hash of a start.
    fn start(&self) -> Option<(&Arc<Definition>, u64)> {
        match (&self.input, &self.definition) {
            (Input::Start { request_hash, .. }, Some(definition)) => {
                Some((definition, *request_hash))
            }
            _ => None,
        }
    }
}

/// What an operation did.
pub(crate) enum Done {
    /// Records were appended at `offsets`; the saga is now in `status` (and `state`,
    /// when the operation wants it).
    Appended {
        status: Status,
        state: Option<SagaState>,
        offsets: Range<u64>,
    },
    /// Nothing to append (a tick with nothing due); the saga is `state`, its records
    /// end at `last_offset`.
    Unchanged { state: SagaState, last_offset: u64 },
    /// A repeated start of an existing saga with the same body.
    Existing { state: SagaState, last_offset: u64 },
    /// A reply whose `event_id` was answered before.
    Repeated(EventAnswer),
}

/// Decided under the shard lock: what to append, and the saga before and after.
struct Pending {
    key: Arc<str>,
    records: Vec<Record>,
    /// The link of the first record (the others follow it).
    link: Link,
    after: SagaState,
    /// Whether the caller needs the new state back (not for replies and ticks).
    want_state: bool,
}

enum Step {
    Busy,
    Done(Done),
    Append(Pending),
    /// Deciding needs this read first; `transact` reads it without the shard lock.
    Read(Need),
}

/// A read a decision needs: the log or the index, never done under the shard lock
/// (but as a last resort, see [`MAX_UNLOCKED_READS`]).
enum Need {
    /// The saga's records through `last_offset`, for the first answer to the reply's
    /// event id (the saga's event bits say it may have one).
    Answer { last_offset: u64 },
    /// The index entry of a saga not in memory, which may have finished; `left` is the
    /// shard's count of sagas that left memory when it was asked for.
    Meta { left: u64 },
}

/// What was read without the shard lock, for the next decision; each fact holds only
/// while the saga (or the shard) is as it was when it was read.
#[derive(Default)]
struct Known {
    /// The reply's event has no answer among the saga's records through this offset.
    unanswered_through: Option<u64>,
    /// The saga has no index entry, read while the shard's `left` count was this.
    no_meta_while_left: Option<u64>,
}

/// Reads one transaction makes without the shard lock before it reads under it: a
/// saga (or shard) changing faster than its reads cannot keep a decision waiting.
const MAX_UNLOCKED_READS: u32 = 4;

/// What a repeated start is compared by: the saga type and the canonical payload.
pub(crate) fn request_hash(saga_type: &str, payload: &str) -> u64 {
    fnv1a(saga_type.bytes().chain([0]).chain(payload.bytes()))
}

impl Inner {
    /// Decides `op` for the saga, appends the records and installs the new state once
    /// they are durable.
    ///
    /// Cancel-safe: once the saga is marked busy, the append and the install run in a
    /// task of their own, so a caller that goes away (a closed HTTP connection) cannot
    /// leave the saga busy, or its records durable but not installed.
    pub(crate) async fn transact(self: &Arc<Self>, saga_id: &str, op: Op) -> Result<Done> {
        let gate = self.gate.clone().read_owned().await;
        self.progress.wait_for_room().await?;
        let shard = self.shard(saga_id);
        let mut known = Known::default();
        let mut reads = 0;
        let pending = loop {
            let idle = shard.idle();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let under_lock = reads >= MAX_UNLOCKED_READS;
            match self.decide_locked(shard, saga_id, &op, &mut known, under_lock)? {
                Step::Busy => idle.await,
                Step::Done(done) => return Ok(done),
                Step::Append(pending) => break pending,
                Step::Read(need) => {
                    reads += 1;
                    if let Some(done) = self.read_for(saga_id, &op, need, &mut known)? {
                        return Ok(done);
                    }
                }
            }
        };
        // The saga is busy from here: a caller dropped before the records reach the
        // writer releases it (`Release`); one dropped after leaves the rest to a task
        // (`Finishing`), since the records will be durable either way.
        let release = Release {
            inner: self,
            key: Some(pending.key.clone()),
        };
        let encoded: Vec<Vec<u8>> = pending
            .records
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let link = if i == 0 { pending.link } else { Link::Follows };
                encode_saga_record(link, record)
            })
            .collect();
        let submitted = self.log.submit_batch(encoded).await;
        release.disarm();
        match submitted {
            Err(e) => self.install(pending, Err(e)),
            Ok(appending) => {
                Finishing {
                    inner: self.clone(),
                    gate: Some(gate),
                    pending: Some(pending),
                    appending: Some(appending),
                }
                .run()
                .await
            }
        }
    }

    /// Installs the outcome of a transaction's append: the new state once its records
    /// are durable, or the saga as it was when they are not.
    fn install(
        &self,
        pending: Pending,
        appended: sagalog_storage::Result<Range<u64>>,
    ) -> Result<Done> {
        let offsets = match appended {
            Ok(offsets) => offsets,
            Err(e) => {
                self.release(&pending.key);
                return Err(EngineError::Unavailable(e));
            }
        };
        let shard = self.shard(&pending.key);
        let done = {
            let mut sagas = shard.lock();
            let slot = sagas
                .get_mut(&pending.key)
                .expect("a busy saga stays in memory");
            slot.busy = false;
            let before = Summary::of(&slot.state);
            slot.state = pending.after;
            slot.recorded(&pending.records, &offsets);
            self.installed(&pending.key, before, slot, &pending.records, &offsets);
            Done::Appended {
                status: slot.state.status.expect("started"),
                state: pending.want_state.then(|| slot.state.clone()),
                offsets,
            }
        };
        shard.wake_idle();
        Ok(done)
    }

    /// Leaves a busy saga as it was before a transaction whose records were not
    /// appended (a saga that was being started goes), and wakes its waiters.
    fn release(&self, key: &str) {
        let shard = self.shard(key);
        {
            let mut sagas = shard.lock();
            if let Some(slot) = sagas.get_mut(key) {
                slot.busy = false;
                if slot.state.status.is_none() {
                    sagas.remove(key);
                }
            }
        }
        shard.wake_idle();
    }

    /// Decides `op` under the shard lock. A decision that needs the log or the index
    /// returns `Step::Read` instead, unless `read_under_lock` (the last resort): the
    /// caller reads without the lock, keeps what it learnt in `known`, and asks again.
    fn decide_locked(
        &self,
        shard: &Shard,
        saga_id: &str,
        op: &Op,
        known: &mut Known,
        read_under_lock: bool,
    ) -> Result<Step> {
        let now_ms = self.clock.now_ms();
        let mut sagas = shard.lock();
        match sagas.get_mut(saga_id) {
            Some(slot) => self.decide_in_memory(slot, op, known, read_under_lock, now_ms),
            None => {
                let read = (shard.left(), read_under_lock);
                self.decide_absent(&mut sagas, saga_id, op, known, read, now_ms)
            }
        }
    }

    /// Decides `op` for a saga in memory (its shard locked).
    fn decide_in_memory(
        &self,
        slot: &mut Slot,
        op: &Op,
        known: &mut Known,
        read_under_lock: bool,
        now_ms: u64,
    ) -> Result<Step> {
        if slot.busy {
            return Ok(Step::Busy);
        }
        if let Some(as_of_ms) = op.unchanged_since_ms {
            let updated_at_ms = slot.state.updated_at_ms;
            if updated_at_ms > as_of_ms {
                return Err(Rejection::ChangedSince {
                    saga_id: slot.state.saga_id.to_string(),
                    updated_at_ms,
                    as_of_ms,
                }
                .into());
            }
        }
        if let Some((definition, request_hash)) = op.start() {
            return same_start(&slot.state, definition, request_hash).map(|()| {
                Step::Done(Done::Existing {
                    state: slot.state.clone(),
                    last_offset: slot.last_offset,
                })
            });
        }
        if let Input::Reply(reply) = &op.input {
            let bits = event_bits(&reply.event_id);
            // The records through `last_offset` are the saga's as it is now: what was
            // read of them holds as long as it is unchanged.
            if slot.events & bits == bits && known.unanswered_through != Some(slot.last_offset) {
                let need = Need::Answer {
                    last_offset: slot.last_offset,
                };
                if !read_under_lock {
                    return Ok(Step::Read(need));
                }
                if let Some(done) = self.read_for(&slot.state.saga_id, op, need, known)? {
                    return Ok(Step::Done(done));
                }
            }
        }
        if matches!(op.input, Input::Tick)
            && crate::model::delivery::is_held(&slot.state, &self.delivery.borrow())
        {
            // Its command is held back: its timeout does not fire while delivery is
            // paused (the resume gives it the step's timeout again, and its timer).
            return Ok(Step::Done(Done::Unchanged {
                state: slot.state.clone(),
                last_offset: slot.last_offset,
            }));
        }
        let (records, after) = decide_and_apply(&slot.state, op.input.clone(), now_ms)?;
        let limit = self.config.max_saga_data_bytes;
        if after.results_bytes > slot.state.results_bytes && after.results_bytes > limit as u64 {
            return Err(EngineError::TooLarge {
                field: "the saga's results with this reply's data",
                bytes: usize::try_from(after.results_bytes).unwrap_or(usize::MAX),
                limit,
                option: "--max-saga-data-bytes",
            });
        }
        if records.is_empty() {
            return Ok(Step::Done(Done::Unchanged {
                state: after,
                last_offset: slot.last_offset,
            }));
        }
        slot.busy = true;
        Ok(Step::Append(Pending {
            want_state: !matches!(op.input, Input::Reply(_) | Input::Tick),
            key: slot.state.saga_id.clone(),
            records,
            link: Link::After {
                prev: slot.last_offset,
                first: slot.first_offset,
            },
            after,
        }))
    }

    /// Decides `op` for a saga not in memory (its shard locked, `sagas`): a new saga,
    /// or one that finished and left memory, or none. A saga leaves memory only once its
    /// index entry is written, so an entry read as missing stays missing while no saga
    /// of the shard left memory since (`left`, the shard's count, with whether to read
    /// under the lock).
    fn decide_absent(
        &self,
        sagas: &mut SagaTable,
        saga_id: &str,
        op: &Op,
        known: &mut Known,
        (left, read_under_lock): (u64, bool),
        now_ms: u64,
    ) -> Result<Step> {
        let may_have_finished = !op.fresh_id && self.progress.may_have_finished(saga_id);
        if may_have_finished && known.no_meta_while_left != Some(left) {
            let need = Need::Meta { left };
            if !read_under_lock {
                return Ok(Step::Read(need));
            }
            if let Some(done) = self.read_for(saga_id, op, need, known)? {
                return Ok(Step::Done(done));
            }
        }
        let Some((definition, _)) = op.start() else {
            return Err(self.not_found(saga_id));
        };
        let limit = self.config.max_active_sagas;
        if self.sagas.active() >= limit {
            return Err(EngineError::AtLimit {
                what: crate::error::ACTIVE_SAGAS,
                limit,
            });
        }
        let key: Arc<str> = Arc::from(saga_id);
        let state = SagaState::new(key.clone(), definition.clone());
        let (records, after) = decide_and_apply(&state, op.input.clone(), now_ms)?;
        sagas.insert(Slot {
            state,
            busy: true,
            epoch: 0,
            first_offset: 0,
            last_offset: 0,
            events: 0,
        });
        Ok(Step::Append(Pending {
            want_state: true,
            key,
            records,
            link: Link::Start,
            after,
        }))
    }

    /// Makes the read a decision needs: the answer it gives, when the read settles the
    /// operation, or `None` with what was learnt kept in `known`.
    fn read_for(
        &self,
        saga_id: &str,
        op: &Op,
        need: Need,
        known: &mut Known,
    ) -> Result<Option<Done>> {
        match need {
            Need::Answer { last_offset } => {
                let Input::Reply(reply) = &op.input else {
                    unreachable!("only a reply asks for its answer")
                };
                match self.find_reply(saga_id, last_offset, reply)? {
                    Some(answer) => Ok(Some(Done::Repeated(answer))),
                    None => {
                        known.unanswered_through = Some(last_offset);
                        Ok(None)
                    }
                }
            }
            Need::Meta { left } => match self.meta(saga_id)? {
                // A finished saga never comes back to memory: answer from its records.
                Some(meta) => self.answer_finished(saga_id, op, &meta).map(Some),
                None => {
                    known.no_meta_while_left = Some(left);
                    Ok(None)
                }
            },
        }
    }

    /// `op` on a saga that finished and left memory (its index entry is `meta`).
    fn answer_finished(&self, saga_id: &str, op: &Op, meta: &SagaMeta) -> Result<Done> {
        let finished = || -> EngineError {
            Rejection::Finished {
                saga_id: saga_id.to_string(),
                status: meta.status,
            }
            .into()
        };
        if let Some((definition, request_hash)) = op.start() {
            let loaded = self.load_finished(saga_id, meta)?;
            return same_start(&loaded.state, definition, request_hash).map(|()| Done::Existing {
                state: loaded.state,
                last_offset: loaded.last_offset,
            });
        }
        match &op.input {
            Input::Reply(reply) => match self.find_reply(saga_id, meta.last_offset, reply)? {
                Some(answer) => Ok(Done::Repeated(answer)),
                None => Err(finished()),
            },
            Input::Tick => {
                let loaded = self.load_finished(saga_id, meta)?;
                Ok(Done::Unchanged {
                    state: loaded.state,
                    last_offset: loaded.last_offset,
                })
            }
            // Changed since the moment the operation is for (a bulk call running at the
            // same time finished it): skipped, as it would be in memory.
            _ if op
                .unchanged_since_ms
                .is_some_and(|as_of| meta.updated_at_ms > as_of) =>
            {
                Err(Rejection::ChangedSince {
                    saga_id: saga_id.to_string(),
                    updated_at_ms: meta.updated_at_ms,
                    as_of_ms: op.unchanged_since_ms.unwrap_or_default(),
                }
                .into())
            }
            _ => Err(finished()),
        }
    }

    /// The first answer to `reply`'s event id among the saga's records, read back from
    /// its last; refused when that record holds another reply (see [`same_reply`]).
    fn find_reply(
        &self,
        saga_id: &str,
        last_offset: u64,
        reply: &Reply,
    ) -> Result<Option<EventAnswer>> {
        let history = saga_history(&self.log, saga_id, last_offset)?;
        let found = history.iter().find_map(|(offset, record)| {
            let (id, status) = record.kind.reply()?;
            (id == reply.event_id).then_some((*offset, record, status))
        });
        let Some((offset, record, status)) = found else {
            return Ok(None);
        };
        let definition = self.started_on(saga_id, &history)?;
        if !same_reply(&definition, &record.kind, reply) {
            return Err(Rejection::EventConflict {
                saga_id: saga_id.to_string(),
                event_id: reply.event_id.clone(),
                offset,
            }
            .into());
        }
        Ok(Some(EventAnswer { offset, status }))
    }
}

/// Releases a busy saga whose records never reached the writer (the transaction was
/// dropped while waiting for room in the writer's queue).
struct Release<'a> {
    inner: &'a Inner,
    key: Option<Arc<str>>,
}

impl Release<'_> {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inner.release(&key);
        }
    }
}

/// Waits for a transaction's records to be durable and installs them. Dropped before
/// that (its caller went away), it hands the wait and the install to a task: the
/// records are on their way to disk, and the saga must not stay busy nor its state fall
/// behind its records.
struct Finishing {
    inner: Arc<Inner>,
    gate: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
    pending: Option<Pending>,
    appending: Option<sagalog_storage::Appending>,
}

impl Finishing {
    async fn run(mut self) -> Result<Done> {
        let appended = self.appending.as_mut().expect("set until run").await;
        self.appending = None;
        let pending = self.pending.take().expect("set until run");
        let done = self.inner.install(pending, appended);
        drop(self.gate.take());
        done
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        let (Some(pending), Some(appending)) = (self.pending.take(), self.appending.take()) else {
            return;
        };
        let (inner, gate) = (self.inner.clone(), self.gate.take());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let appended = appending.await;
                    if let Err(e) = inner.install(pending, appended) {
                        tracing::warn!(error = %e, "an abandoned transaction's records were not installed");
                    }
                    drop(gate);
                });
            }
            Err(_) => tracing::error!(
                saga_id = %pending.key,
                "a transaction was dropped outside a runtime; the saga stays busy until restart"
            ),
        }
    }
}

/// The start of an existing saga matches a repeated start when type and payload do.
fn same_start(state: &SagaState, definition: &Definition, request_hash: u64) -> Result<()> {
    if state.definition.name == definition.name && state.request_hash == request_hash {
        Ok(())
    } else {
        Err(EngineError::StartConflict {
            saga_id: state.saga_id.to_string(),
        })
    }
}
