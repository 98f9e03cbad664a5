//! The end of a run's faults: the network heals, the repository recovers, stopped nodes come back, and the liveness probe must commit.

use super::*;

/// Faults stop: the network heals, the repository recovers, every node
/// that is down comes back. Then the liveness probe.
pub(super) async fn settle(world: &World) {
    world.trace.event(0, "faults.stop", "");
    world.net.heal();
    world.host.set_outage(false);
    world.host.set_faults(RepoFaults::none());
    // Nodes a fault took down come back now (their restart task may
    // still be sleeping; starting twice is harmless).
    for id in 1..=world.opts.nodes {
        if world.handle(id).is_none() {
            if let Err(e) = world.start_node(id).await {
                world.violation("restart", e, None);
            }
        }
    }
    let bound = world.opts.liveness_bound;
    let deadline = tokio::time::Instant::now() + bound;
    // A leader.
    let leader = loop {
        world.observe();
        if let Some((l, _)) = world.leader() {
            break Some(l);
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(leader) = leader else {
        world.violation(
            "liveness",
            format!("no leader {}s after the faults stopped", bound.as_secs()),
            Some("leader"),
        );
        return;
    };
    // The probe commits...
    let Some(h) = world.handle(leader) else {
        return;
    };
    let probe = loop {
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            h.consensus.send(Submit {
                sender: h.user.clone(),
                command: Command::Post {
                    conversation: match ConversationId::new("probe") {
                        Ok(c) => c,
                        Err(_) => return,
                    },
                    content: "liveness probe".into(),
                    attachments: Vec::new(),
                },
                id: None,
            }),
        )
        .await;
        match res {
            Ok(Ok(Ok((req, Proposed::Committed(ApplyOutcome::Applied { index }))))) => {
                world
                    .trace
                    .event(leader, "probe", format!("{} at {index}", req.id));
                break Some(index);
            }
            other => {
                world
                    .trace
                    .event(leader, "probe.retry", answer_label(&other));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let Some(probe) = probe else {
        world.violation(
            "liveness",
            format!(
                "the probe did not commit {}s after the faults stopped",
                bound.as_secs()
            ),
            Some("probe"),
        );
        return;
    };
    // ...and reaches the repository and every node.
    let deadline = tokio::time::Instant::now() + world.opts.commit_interval + bound;
    loop {
        let in_repo = world
            .host
            .head()
            .and_then(|(_, m)| layout::watermark(&m))
            .unwrap_or(0)
            >= probe;
        let everywhere = world.up_nodes().iter().all(|id| {
            world
                .handle(*id)
                .and_then(|h| {
                    let applied = h.replica.metrics().last_applied?;
                    h.replica.group().room_index(applied.index)
                })
                .is_some_and(|i| i >= probe)
        });
        if in_repo && everywhere {
            world.trace.event(0, "settled", format!("probe {probe}"));
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            world.violation(
                "liveness",
                format!(
                    "the probe (index {probe}) was not in the repository (in_repo={in_repo}) and on every node (everywhere={everywhere}) within one commit interval plus {}s",
                    bound.as_secs()
                ),
                None,
            );
            break;
        }
        if !in_repo {
            if let Some((l, _)) = world.leader() {
                if let Some(h) = world.handle(l) {
                    let _ = h.committer.send(Flush(FlushReason::OnDemand)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A group re-formed while the network healed (its founder had been
    // leaderless long enough, and its links were not back yet) is newer
    // than the probe's: every live node must join it within the bound.
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let newest = world
            .host
            .head()
            .map_or(0, |(_, message)| layout::group_epoch(&message));
        let behind: Vec<NodeId> = world
            .up_nodes()
            .into_iter()
            .filter(|id| {
                world
                    .handle(*id)
                    .is_some_and(|h| h.replica.group().epoch < newest)
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            world.violation(
                "one-group-newest-epoch",
                format!(
                    "nodes {behind:?} did not join the branch's newest group (epoch {newest}) within {}s",
                    bound.as_secs()
                ),
                None,
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Requests still in flight settle (a forward to a dead leader waits
    // out its timeout, then goes to the outbox), outboxes drain, and a
    // last flush writes what they added.
    tokio::time::sleep(world.opts.commit_interval + Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        let drained = world.up_nodes().iter().all(|id| {
            world
                .handle(*id)
                .is_some_and(|h| h.storage.outbox.is_empty())
        });
        if drained {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(h) = world.leader().and_then(|(l, _)| world.handle(l)) {
        let _ = h.committer.send(Flush(FlushReason::OnDemand)).await;
    }
}
