//! Reading sagas back: a saga in memory or one that finished and left it (its index
//! entry, then its records from the log), as a view or as its history. Reads only:
//! nothing here changes the engine, and no lock is held across the I/O.

use std::sync::Arc;

use crate::api::HistoryItem;
use crate::error::{Inconsistency, Result};
use crate::history::saga_history;
use crate::model::definition::Definition;
use crate::model::record::{Kind, Record};
use crate::model::state::{apply_mut, SagaState};
use crate::render::results::StepResults;
use crate::render::view::{self, SagaView};
use crate::service::indexing::SagaMeta;
use crate::service::inner::Inner;

/// A saga read back from its records.
pub(crate) struct Loaded {
    pub state: SagaState,
    pub last_offset: u64,
    /// The start payload, as JSON text.
    pub payload: String,
    pub results: StepResults,
    /// Its latest failure, if it failed.
    pub failure: Option<view::Failure>,
}

impl Loaded {
    pub(crate) fn view(self) -> SagaView {
        view::saga_view(&self.state, self.payload, &self.results, self.failure)
    }
}

impl Inner {
    /// What the index keeps of a finished saga that left memory.
    pub(crate) fn meta(&self, saga_id: &str) -> Result<Option<SagaMeta>> {
        self.index
            .get(&self.keys.saga, saga_id.as_bytes())?
            .map(|value| {
                SagaMeta::decode(&value).ok_or_else(|| {
                    Inconsistency::BadIndexEntry {
                        what: "saga",
                        key: saga_id.to_string(),
                    }
                    .into()
                })
            })
            .transpose()
    }

    /// A finished saga that left memory, rebuilt from its records.
    pub(crate) fn load_finished(&self, saga_id: &str, meta: &SagaMeta) -> Result<Loaded> {
        self.check_retained(saga_id, meta.first_offset)?;
        self.load(saga_id, meta.last_offset, None)
    }

    /// A saga rebuilt from its records through `last_offset` — or, given its `state`
    /// (as memory holds it), only what the state does not keep: the start payload and
    /// the steps' results.
    fn load(&self, saga_id: &str, last_offset: u64, state: Option<SagaState>) -> Result<Loaded> {
        let mut history =
            saga_history(&self.log, saga_id, last_offset).map_err(|e| e.for_saga(saga_id))?;
        // A state handed in is the fold of these records (the saga is in memory).
        let state = match state {
            Some(state) => state,
            None => {
                let mut state = SagaState::new(saga_id, self.started_on(saga_id, &history)?);
                for (_, record) in &history {
                    apply_mut(&mut state, record);
                }
                state
            }
        };
        let mut results = StepResults::default();
        let mut failure = None;
        for (_, record) in &history {
            results.note(&record.kind);
            failure = view::Failure::of(record).or(failure);
        }
        let first_offset = history.first().map_or(last_offset, |(offset, _)| *offset);
        let payload = match history.first_mut().map(|(_, r)| r) {
            Some(Record {
                saga_id: id,
                kind: Kind::SagaStarted { payload, .. },
                ..
            }) if **id == *saga_id => std::mem::take(payload),
            _ => {
                return Err(Inconsistency::WrongStart {
                    saga_id: saga_id.to_string(),
                    offset: first_offset,
                }
                .into())
            }
        };
        Ok(Loaded {
            state,
            last_offset,
            payload,
            results,
            failure,
        })
    }

    /// The definition a saga's history (oldest first, as `saga_history` reads it)
    /// started on.
    pub(crate) fn started_on(
        &self,
        saga_id: &str,
        history: &[(u64, Record)],
    ) -> Result<Arc<Definition>> {
        match history.first().map(|(_, r)| &r.kind) {
            Some(Kind::SagaStarted {
                saga_type,
                definition_version,
                ..
            }) => Ok(self
                .registry
                .read()
                .get(saga_type, *definition_version)
                .cloned()
                .ok_or_else(|| Inconsistency::UnregisteredDefinition {
                    saga_id: saga_id.to_string(),
                    saga_type: saga_type.clone(),
                    version: *definition_version,
                })?),
            _ => Err(Inconsistency::HistoryWithoutStart {
                saga_id: saga_id.to_string(),
            }
            .into()),
        }
    }

    /// Where a saga's records end, whether it is in memory or finished: (first, last).
    fn saga_offsets(&self, saga_id: &str) -> Result<Option<(u64, u64)>> {
        let in_memory = self.sagas.offsets(saga_id);
        match in_memory {
            Some(offsets) => Ok(Some(offsets)),
            None => Ok(self.meta(saga_id)?.map(|m| (m.first_offset, m.last_offset))),
        }
    }

    /// The view of a saga in memory (`state`, whose records end at `last_offset`).
    pub(crate) fn view(&self, state: SagaState, last_offset: u64) -> Result<SagaView> {
        let saga_id = state.saga_id.clone();
        Ok(self.load(&saga_id, last_offset, Some(state))?.view())
    }

    pub(crate) fn get_view(&self, saga_id: &str) -> Result<SagaView> {
        if let Some((state, last_offset)) = self.sagas.state(saga_id) {
            return self.view(state, last_offset);
        }
        match self.meta(saga_id)? {
            Some(meta) => Ok(self.load_finished(saga_id, &meta)?.view()),
            None => Err(self.not_found(saga_id)),
        }
    }

    pub(crate) fn history(&self, saga_id: &str) -> Result<Vec<HistoryItem>> {
        let (_, last) = self
            .saga_offsets(saga_id)?
            .ok_or_else(|| self.not_found(saga_id))?;
        Ok(saga_history(&self.log, saga_id, last)
            .map_err(|e| e.for_saga(saga_id))?
            .into_iter()
            .map(|(offset, record)| HistoryItem { offset, record })
            .collect())
    }
}
