//! The chat state machine's logic, free of storage.
//!
//! [`apply`] decides what one committed [`ChatRequest`] does, reading the
//! current state through [`ChatView`] and answering with the [`Effect`]s to
//! write and the [`ApplyOutcome`] to report. The RocksDB state machine in
//! `skygit-storage` and [`MemChat`] (tests, simulator) both run this same
//! function, so they cannot disagree.
//!
//! Invariants enforced here:
//! - a request id takes effect at most once (retries and re-formed groups
//!   propose the same id again; the second time is a `Duplicate`);
//! - only the author edits or deletes a message;
//! - the sync watermark only moves forward and never past the entry that
//!   records it;
//! - a request that breaks a bound is refused, never half-applied.

use std::collections::BTreeMap;

use ulid::Ulid;

use crate::model::{
    ApplyOutcome, Change, ChangeKind, ChatRequest, Command, Conversation, ConversationId, Message,
    MessageRecord, Rejection, RoomSettings,
};

/// Read access to the state a request is applied to.
pub trait ChatView {
    type Error;
    /// The message with this id, if any.
    fn message(&mut self, id: Ulid) -> Result<Option<MessageRecord>, Self::Error>;
    /// Whether the conversation exists.
    fn conversation_exists(&mut self, id: &ConversationId) -> Result<bool, Self::Error>;
    /// The index at which request `id` took effect, if it did.
    fn applied_request(&mut self, id: Ulid) -> Result<Option<u64>, Self::Error>;
    /// The highest index known to be in the repository (0 when none).
    fn synced_up_to(&mut self) -> Result<u64, Self::Error>;
    /// The room's settings as the log has set them.
    fn settings(&mut self) -> Result<RoomSettings, Self::Error>;
}

/// One write the state machine must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Insert or replace a message (keyed by conversation and post index,
    /// and by id).
    PutMessage(MessageRecord),
    PutConversation(Conversation),
    /// Remember that request `id` took effect at `index`.
    RecordRequest {
        id: Ulid,
        index: u64,
    },
    /// A change to keep in the journal until the repository has it. Its
    /// `term` is 0 here; the state machine fills in the entry's term.
    Journal(Change),
    /// Entries up to `up_to_index` are in the repository as `commit_sha`;
    /// the journal forgets changes up to that index.
    Synced {
        up_to_index: u64,
        commit_sha: String,
    },
    /// The room's settings are now these.
    PutSettings(RoomSettings),
}

/// Applies one committed request at room index `index`.
pub fn apply<V: ChatView>(
    view: &mut V,
    index: u64,
    req: &ChatRequest,
) -> Result<(Vec<Effect>, ApplyOutcome), V::Error> {
    if let Some(original_index) = view.applied_request(req.id)? {
        return Ok((Vec::new(), ApplyOutcome::Duplicate { original_index }));
    }
    let reject = |reason| Ok((Vec::new(), ApplyOutcome::Rejected { index, reason }));
    if let Err(e) = req.validate() {
        return reject(Rejection::Invalid(e.to_string()));
    }
    let mut effects = Vec::with_capacity(4);
    let change = |conversation: &ConversationId, kind| {
        Effect::Journal(Change {
            index,
            term: 0,
            request: req.id,
            sender: req.sender.clone(),
            at: req.at,
            conversation: conversation.clone(),
            kind,
            signature: req.signature.clone(),
        })
    };
    match &req.command {
        Command::Post {
            conversation,
            content,
            attachments,
        } => {
            if !view.conversation_exists(conversation)? {
                effects.push(implicitly_created(conversation, req, index));
            }
            // This arm is a post, so the record is always made.
            effects.extend(MessageRecord::posted(req, index).map(Effect::PutMessage));
            effects.push(change(
                conversation,
                ChangeKind::Post {
                    message: req.id,
                    content: content.clone(),
                    attachments: attachments.clone(),
                },
            ));
        }
        Command::Edit { message, content } => {
            let mut rec = match changeable(view, *message, req)? {
                Ok(rec) => rec,
                Err(reason) => return reject(reason),
            };
            rec.message.content = content.clone();
            rec.message.edited_at = Some(req.at);
            rec.message.signed = req.signature.is_some();
            rec.last_change_index = index;
            effects.push(change(
                &rec.message.conversation,
                ChangeKind::Edit {
                    message: *message,
                    content: content.clone(),
                },
            ));
            effects.push(Effect::PutMessage(rec));
        }
        Command::Delete { message } => {
            let mut rec = match changeable(view, *message, req)? {
                Ok(rec) => rec,
                Err(reason) => return reject(reason),
            };
            rec.message.deleted = true;
            rec.message.content.clear();
            rec.last_change_index = index;
            effects.push(change(
                &rec.message.conversation,
                ChangeKind::Delete { message: *message },
            ));
            effects.push(Effect::PutMessage(rec));
        }
        Command::Call {
            conversation,
            entry,
        } => {
            if !view.conversation_exists(conversation)? {
                effects.push(implicitly_created(conversation, req, index));
            }
            effects.push(Effect::PutMessage(MessageRecord {
                message: Message {
                    id: req.id,
                    conversation: conversation.clone(),
                    sender: req.sender.clone(),
                    content: String::new(),
                    created_at: req.at,
                    edited_at: None,
                    deleted: false,
                    signed: req.signature.is_some(),
                    attachments: Vec::new(),
                    call: Some(entry.clone()),
                },
                index,
                last_change_index: index,
            }));
            effects.push(change(
                conversation,
                ChangeKind::Call {
                    message: req.id,
                    entry: entry.clone(),
                },
            ));
        }
        Command::CreateConversation {
            conversation,
            title,
        } => {
            if view.conversation_exists(conversation)? {
                return reject(Rejection::ConversationExists(conversation.clone()));
            }
            effects.push(Effect::PutConversation(Conversation {
                id: conversation.clone(),
                title: title.clone(),
                created_by: req.sender.clone(),
                created_at: req.at,
                created_index: index,
            }));
            effects.push(change(
                conversation,
                ChangeKind::CreateConversation {
                    title: title.clone(),
                },
            ));
        }
        Command::Synced {
            up_to_index,
            commit_sha,
        } => {
            let current = view.synced_up_to()?;
            if *up_to_index <= current {
                return reject(Rejection::StaleWatermark {
                    requested: *up_to_index,
                    current,
                });
            }
            if *up_to_index >= index {
                return reject(Rejection::FutureWatermark {
                    requested: *up_to_index,
                    index,
                });
            }
            effects.push(Effect::Synced {
                up_to_index: *up_to_index,
                commit_sha: commit_sha.clone(),
            });
        }
        Command::Configure {
            commit_interval_secs,
            voters,
        } => {
            let mut s = view.settings()?;
            if let Some(i) = commit_interval_secs {
                s.commit_interval_secs = Some(*i);
            }
            if let Some(v) = voters {
                s.voters = Some(*v);
            }
            s.changed_index = index;
            s.changed_at = req.at;
            effects.push(Effect::PutSettings(s));
        }
    }
    effects.push(Effect::RecordRequest { id: req.id, index });
    Ok((effects, ApplyOutcome::Applied { index }))
}

/// The message `id` if `req`'s sender may change it: it exists, they wrote
/// it, and it is not deleted.
/// The conversation a post (or a call line) into a conversation that
/// does not exist yet creates, titled with its name.
fn implicitly_created(conversation: &ConversationId, req: &ChatRequest, index: u64) -> Effect {
    Effect::PutConversation(Conversation {
        id: conversation.clone(),
        title: conversation.to_string(),
        created_by: req.sender.clone(),
        created_at: req.at,
        created_index: index,
    })
}

fn changeable<V: ChatView>(
    view: &mut V,
    id: Ulid,
    req: &ChatRequest,
) -> Result<Result<MessageRecord, Rejection>, V::Error> {
    let Some(rec) = view.message(id)? else {
        return Ok(Err(Rejection::NoSuchMessage(id)));
    };
    if rec.message.sender != req.sender {
        return Ok(Err(Rejection::NotAuthor(id)));
    }
    if rec.message.deleted {
        return Ok(Err(Rejection::Deleted(id)));
    }
    if rec.message.call.is_some() {
        return Ok(Err(Rejection::CallEntry(id)));
    }
    Ok(Ok(rec))
}

/// The chat state held in memory: for unit tests and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemChat {
    pub messages: BTreeMap<Ulid, MessageRecord>,
    pub conversations: BTreeMap<ConversationId, Conversation>,
    pub requests: BTreeMap<Ulid, u64>,
    /// Watermark index to commit sha.
    pub synced: BTreeMap<u64, String>,
    /// Changes not yet in the repository, by index.
    pub journal: BTreeMap<u64, Change>,
    pub settings: RoomSettings,
}

impl ChatView for MemChat {
    type Error = std::convert::Infallible;
    fn message(&mut self, id: Ulid) -> Result<Option<MessageRecord>, Self::Error> {
        Ok(self.messages.get(&id).cloned())
    }
    fn conversation_exists(&mut self, id: &ConversationId) -> Result<bool, Self::Error> {
        Ok(self.conversations.contains_key(id))
    }
    fn applied_request(&mut self, id: Ulid) -> Result<Option<u64>, Self::Error> {
        Ok(self.requests.get(&id).copied())
    }
    fn synced_up_to(&mut self) -> Result<u64, Self::Error> {
        Ok(self.synced.keys().next_back().copied().unwrap_or(0))
    }
    fn settings(&mut self) -> Result<RoomSettings, Self::Error> {
        Ok(self.settings)
    }
}

impl MemChat {
    /// Applies a request and its effects.
    pub fn apply(&mut self, index: u64, req: &ChatRequest) -> ApplyOutcome {
        let Ok((effects, outcome)) = apply(self, index, req);
        for e in effects {
            match e {
                Effect::PutMessage(r) => {
                    self.messages.insert(r.message.id, r);
                }
                Effect::PutConversation(c) => {
                    self.conversations.insert(c.id.clone(), c);
                }
                Effect::RecordRequest { id, index } => {
                    self.requests.insert(id, index);
                }
                Effect::Journal(c) => {
                    self.journal.insert(c.index, c);
                }
                Effect::Synced {
                    up_to_index,
                    commit_sha,
                } => {
                    self.journal = self.journal.split_off(&(up_to_index + 1));
                    self.synced.insert(up_to_index, commit_sha);
                }
                Effect::PutSettings(s) => self.settings = s,
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{UserId, MAX_COMMIT_INTERVAL_SECS};

    fn req(n: u128, sender: &str, command: Command) -> ChatRequest {
        ChatRequest {
            id: Ulid(n),
            sender: UserId::new(sender).unwrap(),
            at: 1000 + n as i64,
            command,
            signature: None,
        }
    }

    fn post(n: u128, sender: &str, text: &str) -> ChatRequest {
        req(
            n,
            sender,
            Command::Post {
                conversation: ConversationId::general(),
                content: text.into(),
                attachments: Vec::new(),
            },
        )
    }

    fn configure(n: u128, interval: Option<u64>, voters: Option<u8>) -> ChatRequest {
        req(
            n,
            "ana",
            Command::Configure {
                commit_interval_secs: interval,
                voters,
            },
        )
    }

    #[test]
    fn settings_merge_change_by_change_and_bad_ones_are_refused() {
        let mut s = MemChat::default();
        assert_eq!(s.settings, RoomSettings::default());
        assert_eq!(
            s.apply(3, &configure(1, Some(60), None)),
            ApplyOutcome::Applied { index: 3 }
        );
        assert_eq!(
            s.apply(5, &configure(2, None, Some(5))),
            ApplyOutcome::Applied { index: 5 }
        );
        assert_eq!(
            s.settings,
            RoomSettings {
                commit_interval_secs: Some(60),
                voters: Some(5),
                changed_index: 5,
                changed_at: 1002,
            }
        );
        // Out of range, an even voter count, or nothing to change.
        for (n, bad) in [
            (3, configure(3, Some(0), None)),
            (4, configure(4, Some(MAX_COMMIT_INTERVAL_SECS + 1), None)),
            (5, configure(5, None, Some(2))),
            (6, configure(6, None, None)),
        ] {
            assert!(
                matches!(s.apply(n + 10, &bad), ApplyOutcome::Rejected { .. }),
                "{bad}"
            );
        }
        assert_eq!(
            s.settings.changed_index, 5,
            "refused changes change nothing"
        );
        assert!(s.journal.is_empty(), "settings are not chat changes");
    }

    #[test]
    fn a_request_id_applies_once() {
        let mut s = MemChat::default();
        assert_eq!(
            s.apply(1, &post(1, "ana", "hi")),
            ApplyOutcome::Applied { index: 1 }
        );
        assert_eq!(
            s.apply(2, &post(1, "ana", "hi")),
            ApplyOutcome::Duplicate { original_index: 1 }
        );
        assert_eq!(s.messages.len(), 1);
        assert_eq!(s.messages[&Ulid(1)].index, 1);
    }

    #[test]
    fn posting_creates_the_conversation() {
        let mut s = MemChat::default();
        s.apply(1, &post(1, "ana", "hi"));
        assert!(s.conversations.contains_key(&ConversationId::general()));
        let c = req(
            2,
            "bo",
            Command::CreateConversation {
                conversation: ConversationId::general(),
                title: "again".into(),
            },
        );
        assert!(matches!(
            s.apply(2, &c),
            ApplyOutcome::Rejected {
                reason: Rejection::ConversationExists(_),
                ..
            }
        ));
    }

    #[test]
    fn only_the_author_edits_and_deletes() {
        let mut s = MemChat::default();
        s.apply(1, &post(1, "ana", "hi"));
        let edit = |n, who: &str| {
            req(
                n,
                who,
                Command::Edit {
                    message: Ulid(1),
                    content: "hello".into(),
                },
            )
        };
        assert!(matches!(
            s.apply(2, &edit(2, "bo")),
            ApplyOutcome::Rejected {
                reason: Rejection::NotAuthor(_),
                ..
            }
        ));
        assert_eq!(
            s.apply(3, &edit(3, "ana")),
            ApplyOutcome::Applied { index: 3 }
        );
        let m = &s.messages[&Ulid(1)];
        assert_eq!(m.message.content, "hello");
        assert_eq!(m.message.edited_at, Some(1003));
        assert_eq!((m.index, m.last_change_index), (1, 3));

        let del = |n, who: &str| req(n, who, Command::Delete { message: Ulid(1) });
        assert!(matches!(
            s.apply(4, &del(4, "bo")),
            ApplyOutcome::Rejected { .. }
        ));
        assert_eq!(
            s.apply(5, &del(5, "ana")),
            ApplyOutcome::Applied { index: 5 }
        );
        assert!(s.messages[&Ulid(1)].message.deleted);
        assert!(s.messages[&Ulid(1)].message.content.is_empty());
        assert!(matches!(
            s.apply(6, &edit(6, "ana")),
            ApplyOutcome::Rejected {
                reason: Rejection::Deleted(_),
                ..
            }
        ));
    }

    #[test]
    fn a_call_entry_is_a_message_its_end_applies_once_and_nobody_changes_it() {
        use crate::call::{CallEntry, CallEvent};
        let mut s = MemChat::default();
        let call = Ulid(0xABCD_0000_0000_0000_0000_1234);
        let ended = |sender: &str| ChatRequest {
            id: CallEntry::end_request_id(call),
            ..req(
                0,
                sender,
                Command::Call {
                    conversation: ConversationId::general(),
                    entry: CallEntry {
                        call,
                        event: CallEvent::Ended,
                        participants: vec![UserId::new("ana").expect("user")],
                        duration_ms: 61_000,
                    },
                },
            )
        };
        // Both participants' nodes propose the end; it applies once.
        assert_eq!(
            s.apply(1, &ended("ana")),
            ApplyOutcome::Applied { index: 1 }
        );
        assert_eq!(
            s.apply(2, &ended("bo")),
            ApplyOutcome::Duplicate { original_index: 1 }
        );
        let rec = &s.messages[&CallEntry::end_request_id(call)];
        assert_eq!(rec.message.content, "");
        assert_eq!(rec.message.sender.as_str(), "ana");
        assert_eq!(
            rec.message.call.as_ref().map(|c| (c.event, c.duration_ms)),
            Some((CallEvent::Ended, 61_000))
        );
        assert!(s.conversations.contains_key(&ConversationId::general()));
        let edit = req(
            3,
            "ana",
            Command::Edit {
                message: CallEntry::end_request_id(call),
                content: "no".into(),
            },
        );
        assert!(matches!(
            s.apply(3, &edit),
            ApplyOutcome::Rejected {
                reason: Rejection::CallEntry(_),
                ..
            }
        ));
        // Bounds are checked like every other request's.
        let mut big = ended("ana");
        big.id = Ulid(5);
        if let Command::Call { entry, .. } = &mut big.command {
            entry.duration_ms = crate::call::MAX_CALL_DURATION_MS + 1;
        }
        assert!(matches!(
            s.apply(4, &big),
            ApplyOutcome::Rejected {
                reason: Rejection::Invalid(_),
                ..
            }
        ));
    }

    #[test]
    fn changing_a_missing_message_is_refused() {
        let mut s = MemChat::default();
        let r = req(9, "ana", Command::Delete { message: Ulid(77) });
        assert!(matches!(
            s.apply(1, &r),
            ApplyOutcome::Rejected {
                reason: Rejection::NoSuchMessage(_),
                ..
            }
        ));
        // A refused request may succeed when retried later.
        assert!(s.requests.is_empty());
    }

    #[test]
    fn the_watermark_only_moves_forward() {
        let mut s = MemChat::default();
        let sync = |n, up_to_index| {
            req(
                n,
                "ana",
                Command::Synced {
                    up_to_index,
                    commit_sha: "ab12".into(),
                },
            )
        };
        assert_eq!(
            s.apply(10, &sync(1, 5)),
            ApplyOutcome::Applied { index: 10 }
        );
        assert!(matches!(
            s.apply(11, &sync(2, 5)),
            ApplyOutcome::Rejected {
                reason: Rejection::StaleWatermark { .. },
                ..
            }
        ));
        assert!(matches!(
            s.apply(12, &sync(3, 12)),
            ApplyOutcome::Rejected {
                reason: Rejection::FutureWatermark { .. },
                ..
            }
        ));
        let bad = req(
            4,
            "ana",
            Command::Synced {
                up_to_index: 11,
                commit_sha: "not hex".into(),
            },
        );
        assert!(matches!(
            s.apply(13, &bad),
            ApplyOutcome::Rejected {
                reason: Rejection::Invalid(_),
                ..
            }
        ));
    }

    #[test]
    fn the_journal_keeps_applied_changes_until_they_are_synced() {
        let mut s = MemChat::default();
        s.apply(1, &post(1, "ana", "hi"));
        s.apply(2, &post(2, "bob", "yo"));
        // Refused and duplicate requests change nothing, so they are not journaled.
        s.apply(3, &req(3, "bob", Command::Delete { message: Ulid(1) }));
        s.apply(4, &post(1, "ana", "hi"));
        s.apply(
            5,
            &req(
                5,
                "ana",
                Command::Edit {
                    message: Ulid(1),
                    content: "hello".into(),
                },
            ),
        );
        assert_eq!(s.journal.keys().copied().collect::<Vec<_>>(), [1, 2, 5]);
        assert!(matches!(
            &s.journal[&5].kind,
            ChangeKind::Edit { message, content } if *message == Ulid(1) && content == "hello"
        ));
        s.apply(
            6,
            &req(
                6,
                "ana",
                Command::Synced {
                    up_to_index: 2,
                    commit_sha: "ab".into(),
                },
            ),
        );
        assert_eq!(s.journal.keys().copied().collect::<Vec<_>>(), [5]);
    }
}
