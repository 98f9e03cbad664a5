//! The workload: users posting, editing, deleting and retrying, and how each request is submitted and its answer recorded.

use super::*;

pub(super) fn exp_gap(rng: &mut ChaCha8Rng, mean: Duration) -> Duration {
    // Exponential gaps: -mean * ln(U), U in (0, 1].
    let u: f64 = rng.random_range(f64::EPSILON..=1.0);
    let g = -mean.as_secs_f64() * u.ln();
    Duration::from_secs_f64(g.clamp(0.001, mean.as_secs_f64() * 20.0))
}

/// Users posting, editing, deleting and retrying.
pub(super) async fn workload(world: World, until: tokio::time::Instant) {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(world.opts.seed, "workload"));
    let mut n = 0u64;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(exp_gap(&mut rng, world.opts.request_every)).await;
        let up = world.up_nodes();
        if up.is_empty() {
            continue;
        }
        let node = up[rng.random_range(0..up.len())];
        let Some(h) = world.handle(node) else {
            continue;
        };
        n += 1;
        let roll: f64 = rng.random_range(0.0..1.0);
        // The requests this node's user may edit, delete or retry.
        let pick = {
            let g = world.lock();
            match g.posts_by.get(&h.user) {
                Some(mine) if !mine.is_empty() => {
                    let id = mine[rng.random_range(0..mine.len())];
                    g.acked.get(&id).cloned()
                }
                _ => None,
            }
        };
        let conversation = format!("c{}", rng.random_range(0..3));
        let command = match (roll, &pick) {
            (r, Some(a)) if r < 0.10 => {
                // A client retrying a request whose answer it lost.
                world.lock().workload.retries += 1;
                let w = world.clone();
                let req = a.request.clone();
                actix_rt::spawn(async move {
                    let res = tokio::time::timeout(
                        Duration::from_secs(30),
                        h.consensus.send(Propose(req.clone())),
                    )
                    .await;
                    w.trace.event(
                        node,
                        "workload.retry",
                        format!("{} -> {}", req.id, answer_label(&res)),
                    );
                });
                continue;
            }
            (r, Some(a)) if r < 0.25 => {
                world.lock().workload.edits += 1;
                Command::Edit {
                    message: a.request.id,
                    content: format!("edit {n} by {}", h.user),
                }
            }
            (r, Some(a)) if r < 0.30 => {
                world.lock().workload.deletes += 1;
                Command::Delete {
                    message: a.request.id,
                }
            }
            (r, _) if (0.30..0.33).contains(&r) => {
                // A user changes the room's settings. The voter count stays
                // the run's (a change would reshape the group mid-run); the
                // committer runs at the run's interval (a node override), so
                // only config.json and the settings themselves change.
                world.lock().workload.settings += 1;
                let voters = u8::try_from(world.opts.voters)
                    .ok()
                    .filter(|v| skygit_consensus::model::VOTER_COUNTS.contains(v));
                Command::Configure {
                    commit_interval_secs: Some(60 + n % 600),
                    voters,
                }
            }
            _ => {
                world.lock().workload.posts += 1;
                let Ok(conversation) = ConversationId::new(conversation) else {
                    continue;
                };
                Command::Post {
                    conversation,
                    content: format!("message {n} from {}", h.user),
                    attachments: Vec::new(),
                }
            }
        };
        let w = world.clone();
        actix_rt::spawn(async move {
            submit(w, node, h, command).await;
        });
    }
}

pub(super) fn answer_label<T: std::fmt::Debug, E: std::fmt::Debug>(res: &Result<T, E>) -> String {
    match res {
        Ok(v) => {
            let s = format!("{v:?}");
            s.chars().take(120).collect()
        }
        Err(_) => "no answer in time".into(),
    }
}

/// The incarnation of node `id` now, if it is up.
pub(super) fn incarnation(world: &World, id: NodeId) -> Option<u64> {
    let g = world.lock();
    g.slots
        .get(&id)
        .filter(|s| s.handle.is_some())
        .map(|s| s.incarnation)
}

pub(super) async fn submit(world: World, node: NodeId, h: RoomHandle, command: Command) {
    let asked = incarnation(&world, node);
    let kind = match &command {
        Command::Post { .. } => "post",
        Command::Edit { .. } => "edit",
        Command::Delete { .. } => "delete",
        _ => "other",
    };
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        h.consensus.send(Submit {
            sender: h.user.clone(),
            command,
            id: None,
        }),
    )
    .await;
    // An answer from a node that crashed meanwhile never reached the
    // user: a dead process acknowledges nothing.
    let res = if incarnation(&world, node) == asked {
        res
    } else {
        Ok(Err(actix::MailboxError::Closed))
    };
    let mut g = world.lock();
    match res {
        Ok(Ok(Ok((req, Proposed::Committed(outcome))))) => {
            let index = match outcome {
                ApplyOutcome::Applied { index } => Some(index),
                ApplyOutcome::Duplicate { original_index } => Some(original_index),
                ApplyOutcome::Rejected { .. } => None,
            };
            if let Some(index) = index {
                world
                    .trace
                    .event(node, "ack", format!("{kind} {} at {index}", req.id));
                g.workload.acked += 1;
                g.ack(Acked {
                    node,
                    request: req,
                    index: Some(index),
                });
            } else {
                world
                    .trace
                    .event(node, "refused", format!("{kind} {}: {outcome:?}", req.id));
                g.workload.refused += 1;
            }
        }
        Ok(Ok(Ok((req, Proposed::Queued { outbox_len, .. })))) => {
            world.trace.event(
                node,
                "ack.queued",
                format!("{kind} {} outbox {outbox_len}", req.id),
            );
            g.workload.acked += 1;
            g.workload.queued += 1;
            g.ack(Acked {
                node,
                request: req,
                index: None,
            });
        }
        Ok(Ok(Err(e))) => {
            world.trace.event(node, "refused", format!("{kind}: {e}"));
            g.workload.refused += 1;
        }
        Ok(Err(_)) | Err(_) => {
            world.trace.event(node, "unanswered", kind);
            g.workload.unanswered += 1;
        }
    }
}
