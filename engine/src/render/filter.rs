//! Which commands one reader of the feed wants: the participant service's own topics,
//! and — when several replicas of it share a topic — its share of the sagas, split by a
//! hash of the saga id the way Kafka's default partitioner splits keys (so member `i` of
//! `k` gets the sagas Kafka would put in partition `i` of a `k`-partition topic, and a
//! saga's commands always reach the same member).

/// Most members a topic may be split among.
pub const MAX_MEMBERS: u32 = 1024;
/// Most topics one filter names.
pub const MAX_TOPICS: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandFilter {
    /// Only commands to these topics; every topic when empty.
    topics: Vec<String>,
    /// Only the sagas of member `.1` of `.0`.
    share: Option<(u32, u32)>,
}

/// Why a filter cannot be built (the HTTP layer answers 400 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("topic {0:?} is not a topic name ([A-Za-z0-9._-]{{1,249}})")]
    BadTopic(String),
    #[error("at most {MAX_TOPICS} topics")]
    TooManyTopics,
    #[error("members must be in 1..={MAX_MEMBERS}, and member in 0..members (got member {member} of {members})")]
    BadShare { members: u32, member: u32 },
}

impl CommandFilter {
    /// Every command.
    pub fn all() -> CommandFilter {
        CommandFilter::default()
    }

    /// Commands to `topics` (every topic when empty), of the sagas of member `member`
    /// of `members` when given.
    pub fn new(
        topics: Vec<String>,
        share: Option<(u32, u32)>,
    ) -> Result<CommandFilter, FilterError> {
        if topics.len() > MAX_TOPICS {
            return Err(FilterError::TooManyTopics);
        }
        if let Some(bad) = topics
            .iter()
            .find(|t| !crate::model::definition::is_valid_topic(t))
        {
            return Err(FilterError::BadTopic(bad.clone()));
        }
        if let Some((members, member)) = share {
            if !(1..=MAX_MEMBERS).contains(&members) || member >= members {
                return Err(FilterError::BadShare { members, member });
            }
        }
        Ok(CommandFilter { topics, share })
    }

    /// Whether it lets every command through.
    pub fn is_all(&self) -> bool {
        self.topics.is_empty() && self.share.is_none()
    }

    /// Whether the sagas it wants include `saga_id`.
    pub fn wants_saga(&self, saga_id: &str) -> bool {
        self.share
            .is_none_or(|(members, member)| member_of(saga_id, members) == member)
    }

    /// Whether the topics it wants include `topic`.
    pub fn wants_topic(&self, topic: &str) -> bool {
        self.topics.is_empty() || self.topics.iter().any(|t| t == topic)
    }
}

/// The member (of `members`) that gets the saga `saga_id`'s commands: Kafka's default
/// partition for the key.
pub fn member_of(saga_id: &str, members: u32) -> u32 {
    crate::model::placement::kafka_partition(saga_id, members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_split_sagas_disjointly_and_cover_them() {
        let ids: Vec<String> = (0..3000).map(|i| format!("order-{i}")).collect();
        let mut counts = [0usize; 3];
        for id in &ids {
            let member = member_of(id, 3);
            counts[member as usize] += 1;
            let wanted: Vec<u32> = (0..3)
                .filter(|&m| {
                    CommandFilter::new(vec![], Some((3, m)))
                        .unwrap()
                        .wants_saga(id)
                })
                .collect();
            assert_eq!(wanted, [member]);
        }
        assert!(counts.iter().all(|&n| n > 800), "{counts:?}");
    }

    #[test]
    fn a_bad_filter_says_what_is_wrong() {
        let err = CommandFilter::new(vec![], Some((3, 3))).unwrap_err();
        assert!(err.to_string().contains("member 3 of 3"), "{err}");
        assert!(CommandFilter::new(vec![], Some((0, 0))).is_err());
        assert!(CommandFilter::new(vec!["a b".into()], None).is_err());
        let f = CommandFilter::new(vec!["inventory.commands".into()], None).unwrap();
        assert!(f.wants_topic("inventory.commands") && !f.wants_topic("payment.commands"));
        assert!(CommandFilter::all().is_all() && !f.is_all());
    }
}
