//! Reading sagas back: a saga in memory or one that finished and left it (its index
//! entry, then its records from the log), as a view or as its history. Reads only:
//! nothing here changes the engine, and no lock is held across the I/O.

use std::sync::Arc;

use crate::api::HistoryItem;
use crate::error::{Inconsistency, Result};
use crate::history::{read_saga_record, saga_history};
use crate::model::definition::Definition;
use crate::model::record::{Kind, Record};
use crate::model::state::{apply_mut, SagaState};
use crate::render::view::{self, SagaView};
use crate::service::indexing::SagaMeta;
use crate::service::inner::Inner;

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

    /// A finished saga that left memory, rebuilt from its records:
    /// (state, offset of its first record, its start payload).
    pub(crate) fn load_finished(
        &self,
        saga_id: &str,
        meta: &SagaMeta,
    ) -> Result<(SagaState, u64, String)> {
        self.check_retained(saga_id, meta.first_offset)?;
        let mut history =
            saga_history(&self.log, saga_id, meta.last_offset).map_err(|e| e.for_saga(saga_id))?;
        let definition = self.started_on(saga_id, &history)?;
        let mut state = SagaState::new(saga_id, definition);
        for (_, record) in &history {
            apply_mut(&mut state, record);
        }
        let payload = match &mut history[0].1.kind {
            Kind::SagaStarted { payload, .. } => std::mem::take(payload),
            _ => unreachable!("checked above"),
        };
        Ok((state, meta.first_offset, payload))
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

    pub(crate) fn view(&self, state: &SagaState, first_offset: u64) -> Result<SagaView> {
        let (_, started) =
            read_saga_record(&self.log, first_offset).map_err(|e| e.for_saga(&state.saga_id))?;
        let payload = match started.kind {
            Kind::SagaStarted { payload, .. } if *started.saga_id == *state.saga_id => payload,
            _ => {
                return Err(Inconsistency::WrongStart {
                    saga_id: state.saga_id.to_string(),
                    offset: first_offset,
                }
                .into())
            }
        };
        Ok(view::saga_view(state, payload))
    }

    pub(crate) fn get_view(&self, saga_id: &str) -> Result<SagaView> {
        let in_memory = self.sagas.state(saga_id);
        if let Some((state, first_offset)) = in_memory {
            return self.view(&state, first_offset);
        }
        match self.meta(saga_id)? {
            // The records are read already: the payload is the first one's.
            Some(meta) => {
                let (state, _, payload) = self.load_finished(saga_id, &meta)?;
                Ok(view::saga_view(&state, payload))
            }
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
