//! The end-state invariants: every acknowledged message on every node and in the repository exactly once, the branch's history, the room's settings.

use super::*;

/// The repository's view: each message's post index, count and final
/// state, from the batch files at the head.
#[derive(Default)]
pub(super) struct RepoView {
    posts: BTreeMap<Ulid, Vec<u64>>,
    state: BTreeMap<Ulid, (String, bool)>,
    indexes: BTreeMap<u64, Ulid>,
}

pub(super) fn repo_view(world: &World) -> Result<RepoView, String> {
    let mut changes = Vec::new();
    for (path, bytes) in world.host.files_at_head() {
        if path == layout::CONFIG_PATH || !path.starts_with(layout::MESSAGES_DIR) {
            continue;
        }
        let mut c = layout::parse_batch(&path, &bytes).map_err(|e| format!("{path}: {e}"))?;
        changes.append(&mut c);
    }
    changes.sort_by_key(|c| c.index);
    let mut v = RepoView::default();
    for c in changes {
        if let Some(prev) = v.indexes.insert(c.index, c.request) {
            if prev != c.request {
                return Err(format!(
                    "index {} holds {} and {}",
                    c.index, prev, c.request
                ));
            }
        }
        match c.kind {
            ChangeKind::Post {
                message, content, ..
            } => {
                v.posts.entry(message).or_default().push(c.index);
                v.state.insert(message, (content, false));
            }
            ChangeKind::Edit { message, content } => {
                if let Some(s) = v.state.get_mut(&message) {
                    s.0 = content;
                }
            }
            ChangeKind::Delete { message } => {
                if let Some(s) = v.state.get_mut(&message) {
                    s.1 = true;
                }
            }
            // The simulator places no calls; a call entry is a post of
            // its own that must appear once like any other.
            ChangeKind::Call { message, .. } => {
                v.posts.entry(message).or_default().push(c.index);
            }
            ChangeKind::CreateConversation { .. } => {}
        }
    }
    Ok(v)
}

/// The end-state invariants. Answers how many commits the branch has.
pub(super) async fn check_end(world: &World) -> u64 {
    for v in world.host.check_history() {
        world.violation("repository-history", v, Some("repo.commit"));
    }
    let view = match repo_view(world) {
        Ok(v) => v,
        Err(e) => {
            world.violation("repository-readable", e, None);
            return 0;
        }
    };
    let acked: Vec<Acked> = world.lock().acked.values().cloned().collect();
    // Exactly once in the repository.
    for (id, idx) in &view.posts {
        if idx.len() > 1 {
            world.violation(
                "exactly-once",
                format!(
                    "message {id} is in the repository {} times (indexes {idx:?})",
                    idx.len()
                ),
                Some(&id.to_string()),
            );
        }
    }
    for a in &acked {
        if let Command::Post { .. } = a.request.command {
            if !view.posts.contains_key(&a.request.id) {
                world.violation(
                    "acknowledged-in-repository",
                    format!(
                        "message {} acknowledged by node {} (index {:?}) is not in the repository",
                        a.request.id, a.node, a.index
                    ),
                    Some(&a.request.id.to_string()),
                );
            }
        }
    }
    // After the faults, every live node is in one group: the newest
    // epoch the branch names.
    let head_epoch = world
        .host
        .head()
        .map_or(0, |(_, message)| layout::group_epoch(&message));
    for id in world.up_nodes() {
        let Some(h) = world.handle(id) else { continue };
        let epoch = h.replica.group().epoch;
        if epoch != head_epoch {
            world.violation(
                "one-group-newest-epoch",
                format!("node {id} is in group epoch {epoch}; the branch's newest is {head_epoch}"),
                Some(&format!("n{id} ")),
            );
        }
    }
    // Every live node: every acknowledged message once, same order, same
    // final text as the repository, synced records that match it.
    let commits = match world.host.head() {
        Some((head, _)) => {
            let client = world.host.client(0);
            client.history(&head, 1_000_000).await.unwrap_or_default()
        }
        None => Vec::new(),
    };
    let marks: BTreeMap<String, u64> = commits
        .iter()
        .map(|c| (c.sha.clone(), layout::watermark(&c.message).unwrap_or(0)))
        .collect();
    for id in world.up_nodes() {
        let Some(h) = world.handle(id) else { continue };
        let records = match h.storage.reader.all_messages() {
            Ok(r) => r,
            Err(e) => {
                world.violation("storage-readable", format!("node {id}: {e}"), None);
                continue;
            }
        };
        let mut seen: BTreeMap<Ulid, u64> = BTreeMap::new();
        for r in &records {
            let m = &r.message;
            if let Some(prev) = seen.insert(m.id, r.index) {
                world.violation(
                    "exactly-once",
                    format!(
                        "node {id} holds message {} twice (indexes {prev} and {})",
                        m.id, r.index
                    ),
                    Some(&m.id.to_string()),
                );
            }
            if let Some(idx) = view.posts.get(&m.id) {
                if !idx.contains(&r.index) {
                    world.violation(
                        "committed-order",
                        format!(
                            "node {id} has message {} at index {}, the repository at {idx:?}",
                            m.id, r.index
                        ),
                        Some(&m.id.to_string()),
                    );
                }
            }
            if let Some((content, deleted)) = view.state.get(&m.id) {
                // A deleted message's text is gone on the node; the
                // repository keeps its history.
                let same = *deleted == m.deleted && (m.deleted || *content == m.content);
                if !same {
                    world.violation(
                        "synced-matches-repository",
                        format!(
                            "node {id}: message {} is ({:?}, deleted={}) but ({content:?}, deleted={deleted}) in the repository",
                            m.id, m.content, m.deleted
                        ),
                        Some(&m.id.to_string()),
                    );
                }
            }
        }
        for a in &acked {
            if matches!(a.request.command, Command::Post { .. })
                && !seen.contains_key(&a.request.id)
            {
                world.violation(
                    "acknowledged-everywhere",
                    format!(
                        "node {id} lacks acknowledged message {} (acked by node {})",
                        a.request.id, a.node
                    ),
                    Some(&a.request.id.to_string()),
                );
            }
        }
        // The node's synced watermark names a commit of the branch that
        // carries that watermark.
        match h.storage.reader.synced_up_to() {
            Ok(w) if w > 0 => match h.storage.reader.commit_for(w) {
                Ok(Some(sha)) => match marks.get(&sha) {
                    Some(m) if *m == w => {}
                    Some(m) => world.violation(
                        "synced-matches-repository",
                        format!("node {id}: synced up to {w} at {sha}, whose trailer says {m}"),
                        Some(&sha[..sha.len().min(8)]),
                    ),
                    None => world.violation(
                        "synced-matches-repository",
                        format!("node {id}: synced up to {w} at {sha}, which is not on the branch"),
                        Some(&sha[..sha.len().min(8)]),
                    ),
                },
                Ok(None) => world.violation(
                    "synced-matches-repository",
                    format!("node {id}: synced up to {w} without a commit"),
                    None,
                ),
                Err(e) => world.violation("storage-readable", format!("node {id}: {e}"), None),
            },
            Ok(_) => {}
            Err(e) => world.violation("storage-readable", format!("node {id}: {e}"), None),
        }
    }
    check_settings(world).await;
    commits.len() as u64
}

/// The room's settings: every live node that applied the newest change
/// holds the same settings, and the repository's `config.json` has them.
pub(super) async fn check_settings(world: &World) {
    let mut newest: Option<(NodeId, skygit_consensus::model::RoomSettings)> = None;
    let mut all = Vec::new();
    for id in world.up_nodes() {
        let Some(h) = world.handle(id) else { continue };
        match h.storage.reader.settings() {
            Ok(s) => {
                if newest.is_none_or(|(_, n)| s.changed_index > n.changed_index) {
                    newest = Some((id, s));
                }
                all.push((id, s));
            }
            Err(e) => world.violation("storage-readable", format!("node {id}: {e}"), None),
        }
    }
    let Some((holder, s)) = newest.filter(|(_, s)| s.changed_index > 0) else {
        return;
    };
    for (id, other) in all {
        if other.changed_index == s.changed_index && other != s {
            world.violation(
                "settings-agree",
                format!("node {id} has settings {other:?}, node {holder} {s:?}"),
                None,
            );
        }
    }
    let Some((head, _)) = world.host.head() else {
        world.violation(
            "settings-in-repository",
            "the repository is empty".into(),
            None,
        );
        return;
    };
    let client = world.host.client(0);
    match readback::config_at(&client, &head).await {
        Ok(Some(Ok(c))) => {
            let wanted = c.with_settings(&s);
            if c != wanted {
                world.violation(
                    "settings-in-repository",
                    format!(
                        "config.json has interval {} s and {} voters; the room's settings (index {}) say {:?} and {:?}",
                        c.commit_interval_secs, c.voters, s.changed_index, s.commit_interval_secs, s.voters
                    ),
                    Some(&head[..head.len().min(8)]),
                );
            }
        }
        Ok(Some(Err(e))) => {
            world.violation("settings-in-repository", format!("config.json: {e}"), None)
        }
        Ok(None) => world.violation("settings-in-repository", "no config.json".into(), None),
        Err(e) => world.violation("repository-readable", e.to_string(), None),
    }
}
