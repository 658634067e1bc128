//! Pausing and resuming command delivery (see `model::delivery`): each change is a log
//! entry, appended with the snapshot gate held exclusively — no transaction is in
//! flight, so no timer fires half way through it and the cut of a snapshot sees the
//! state of the log below it — and the state moves only once the entry is durable.
//! A resume gives the sagas waiting on the resumed topics their step's timeout again,
//! as replay does for the same entry.

use std::sync::Arc;

use crate::api::invalid;
use crate::error::Result;
use crate::model::delivery::{extend_after_resume, extension, Delivery, MAX_TOPICS_PER_CHANGE};
use crate::model::record::Entry;
use crate::service::engine::Engine;
use crate::service::inner::{task_failed, Inner};

/// Longest reason a pause keeps, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// What a pause or resume did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryChange {
    /// The offset of its entry; `None` when nothing changed (nothing was recorded).
    pub offset: Option<u64>,
    /// What is paused now.
    pub delivery: Delivery,
}

impl Engine {
    /// What is paused now.
    pub fn delivery(&self) -> Delivery {
        self.inner.delivery.borrow().clone()
    }

    /// The topic of every step of the registered definitions: what a pause may name.
    pub fn step_topics(&self) -> std::collections::BTreeSet<String> {
        self.inner.registry.read().step_topics()
    }

    /// Follows what is paused (the relay and the outbox wait on it).
    pub fn delivery_changes(&self) -> tokio::sync::watch::Receiver<Delivery> {
        self.inner.delivery.subscribe()
    }

    /// Pauses the delivery of commands to `topics` (every topic when empty); recorded
    /// in the log with `reason`. Pausing what is paused already records nothing.
    pub async fn pause_delivery(
        &self,
        topics: Vec<String>,
        reason: String,
    ) -> Result<DeliveryChange> {
        self.inner.check_topics(&topics)?;
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(invalid(
                "reason",
                format!("at most {MAX_REASON_CHARS} characters"),
            ));
        }
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.change_delivery(topics, Some(reason)).await })
            .await
            .unwrap_or_else(|e| Err(task_failed("pausing delivery", e)))
    }

    /// Resumes the delivery of commands to `topics` (every topic when empty).
    pub async fn resume_delivery(&self, topics: Vec<String>) -> Result<DeliveryChange> {
        self.inner.check_topics(&topics)?;
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.change_delivery(topics, None).await })
            .await
            .unwrap_or_else(|e| Err(task_failed("resuming delivery", e)))
    }
}

impl Inner {
    /// Every name in `topics` is a step topic of a registered definition (a typo must
    /// not pause nothing while looking like a pause), at most
    /// [`MAX_TOPICS_PER_CHANGE`], and none twice.
    fn check_topics(&self, topics: &[String]) -> Result<()> {
        if topics.len() > MAX_TOPICS_PER_CHANGE {
            return Err(invalid(
                "topics",
                format!("at most {MAX_TOPICS_PER_CHANGE} topics at once"),
            ));
        }
        let known = self.registry.read().step_topics();
        let mut seen = std::collections::BTreeSet::new();
        for topic in topics {
            if !seen.insert(topic) {
                return Err(invalid("topics", format!("{topic:?} is named twice")));
            }
            if !known.contains(topic) {
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                return Err(invalid(
                    "topics",
                    format!(
                        "{topic:?} is no step's topic; the registered definitions' topics are: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Pauses (`reason` given) or resumes `topics`; the caller runs it in a task of its
    /// own, so that a caller going away cannot leave the entry durable and the state
    /// unchanged.
    async fn change_delivery(
        self: Arc<Self>,
        topics: Vec<String>,
        reason: Option<String>,
    ) -> Result<DeliveryChange> {
        let _gate = self.gate.write().await;
        let before = self.delivery.borrow().clone();
        let mut after = before.clone();
        match &reason {
            Some(_) => after.pause(&topics),
            None => after.resume(&topics),
        }
        if after == before {
            return Ok(DeliveryChange {
                offset: None,
                delivery: after,
            });
        }
        let at_ms = self.clock.now_ms();
        let entry = match reason {
            Some(reason) => Entry::DeliveryPaused {
                topics,
                reason,
                at_ms,
            },
            None => Entry::DeliveryResumed { topics, at_ms },
        };
        let resumed = matches!(entry, Entry::DeliveryResumed { .. });
        let offset = self.append_entry(entry).await?;
        if resumed {
            self.extend_resumed(&before, &after, at_ms);
        }
        tracing::warn!(offset, delivery = %after.describe(), "command delivery changed");
        self.delivery.send_replace(after.clone());
        Ok(DeliveryChange {
            offset: Some(offset),
            delivery: after,
        })
    }

    /// The sagas waiting on a command to a topic the resume opened get their step's
    /// timeout again from `at_ms`, and their timers move (one shard lock at a time).
    fn extend_resumed(&self, before: &Delivery, after: &Delivery, at_ms: u64) {
        for shard in self.sagas.shards() {
            let mut sagas = shard.lock();
            for id in sagas.ids() {
                // Only a saga that changes is taken with `get_mut` (which keeps a
                // snapshot capture's image first).
                let moves = sagas
                    .get(&id)
                    .is_some_and(|slot| extension(&slot.state, before, after, at_ms).is_some());
                if !moves {
                    continue;
                }
                let slot = sagas.get_mut(&id).expect("just found");
                if let Some((old, new)) = extend_after_resume(&mut slot.state, before, after, at_ms)
                {
                    self.timers.moved(&id, Some(old), Some(new));
                }
            }
        }
    }
}
