//! The handles onto the simulated host: SimRepoHost (the test's controls) and SimRepo (one node's RepoRemote and PresenceChannel).

use super::*;

/// The simulated repository host shared by every node of a run.
#[derive(Clone)]
pub struct SimRepoHost {
    inner: Arc<Mutex<Host>>,
}

impl SimRepoHost {
    /// A host with an empty branch. Must be created inside the
    /// simulation's runtime (the write budgets read tokio time).
    pub fn new(seed: u64, faults: RepoFaults, trace: Trace) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Host {
                rng: ChaCha8Rng::seed_from_u64(seed),
                faults,
                outage: false,
                ignore_cas: false,
                blobs: BTreeMap::new(),
                commits: BTreeMap::new(),
                head: None,
                updates: Vec::new(),
                presence: BTreeMap::new(),
                clients: BTreeMap::new(),
                stats: RepoStats::default(),
                trace,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Host> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node `node`'s handle; implements both [`RepoRemote`] and
    /// [`PresenceChannel`].
    pub fn client(&self, node: NodeId) -> SimRepo {
        SimRepo {
            host: self.clone(),
            node,
        }
    }

    /// While down, every call is answered 503 (after its latency).
    pub fn set_outage(&self, down: bool) {
        let mut h = self.lock();
        h.outage = down;
        h.event(0, "repo.set_outage", if down { "down" } else { "up" });
    }

    /// Replaces the fault settings (e.g. [`RepoFaults::none`] for a quiet
    /// period at the end of a run).
    pub fn set_faults(&self, faults: RepoFaults) {
        let mut h = self.lock();
        h.faults = faults;
        h.event(0, "repo.set_faults", format_args!("{faults:?}"));
    }

    /// The `committer-ignores-cas` canary: commits ignore `expected_head`
    /// and force-move the branch to a new commit whose parent is
    /// `expected_head`, overwriting whatever moved the branch meanwhile.
    pub fn set_ignore_cas(&self, on: bool) {
        let mut h = self.lock();
        h.ignore_cas = on;
        h.event(0, "repo.set_ignore_cas", on);
    }

    /// Stores raw bytes as `node`'s presence record, as a hostile or
    /// broken client could (at most 256 KiB; larger is dropped).
    pub fn inject_presence(&self, node: NodeId, bytes: Vec<u8>) {
        let mut h = self.lock();
        if bytes.len() > MAX_STORED_PRESENCE_BYTES {
            h.event(
                0,
                "repo.inject_presence",
                format_args!("n{node} dropped bytes={}", bytes.len()),
            );
            return;
        }
        h.event(
            0,
            "repo.inject_presence",
            format_args!("n{node} bytes={}", bytes.len()),
        );
        h.presence.insert(node, Arc::new(bytes));
    }

    /// The branch head `(sha, message)`, without faults or latency.
    pub fn head(&self) -> Option<(String, String)> {
        let h = self.lock();
        let sha = h.head.clone()?;
        let message = h.commits.get(&sha).map(|c| c.message.clone())?;
        Some((sha, message))
    }

    /// Every file of the head commit's tree: path -> bytes.
    pub fn files_at_head(&self) -> BTreeMap<String, Vec<u8>> {
        let h = self.lock();
        let Some(c) = h.head.as_ref().and_then(|s| h.commits.get(s)) else {
            return BTreeMap::new();
        };
        c.tree
            .iter()
            .map(|(path, id)| {
                let bytes = h.blobs.get(id).map(|b| b.as_ref().clone());
                (path.to_string(), bytes.unwrap_or_default())
            })
            .collect()
    }

    /// Checks the history invariants; one string per violation:
    /// (1) every commit that was ever the branch head is a first-parent
    /// ancestor of the current head (linear, nothing lost);
    /// (2) no two successful updates moved the branch from the same
    /// version (both built on the same head, or both on an empty branch);
    /// (3) along the first parents, the group epoch a commit names never
    /// falls (no group writes after a newer group's founding).
    pub fn check_history(&self) -> Vec<String> {
        let h = self.lock();
        let mut out = Vec::new();
        let mut ancestors = BTreeSet::new();
        let mut chain = Vec::new();
        let mut next = h.head.clone();
        while let Some(sha) = next {
            if !ancestors.insert(sha.clone()) {
                out.push(format!("the history of the head loops at {}", short(&sha)));
                break;
            }
            let commit = h.commits.get(&sha);
            if let Some(c) = commit {
                chain.push((sha.clone(), skygit_actors::layout::group_epoch(&c.message)));
            }
            next = commit.and_then(|c| c.parent.clone());
        }
        // `chain` runs from the head back: a commit's epoch must not exceed
        // its child's.
        for pair in chain.windows(2) {
            let ((child, child_epoch), (parent, parent_epoch)) = (&pair[0], &pair[1]);
            if child_epoch < parent_epoch {
                out.push(format!(
                    "epoch fell: {} (epoch {child_epoch}) was written on {} (epoch {parent_epoch})",
                    short(child),
                    short(parent)
                ));
            }
        }
        let mut reported = BTreeSet::new();
        for (i, u) in h.updates.iter().enumerate() {
            if !ancestors.contains(&u.to) && reported.insert(u.to.as_str()) {
                out.push(format!(
                    "lost commit: {} (update #{i} by n{}, {} -> {}) is not a first-parent \
                     ancestor of the head {}",
                    short(&u.to),
                    u.node,
                    short_opt(u.from.as_deref()),
                    short(&u.to),
                    short_opt(h.head.as_deref()),
                ));
            }
        }
        let mut by_base: BTreeMap<Option<&str>, Vec<(usize, &RefUpdate)>> = BTreeMap::new();
        for (i, u) in h.updates.iter().enumerate() {
            by_base.entry(u.base.as_deref()).or_default().push((i, u));
        }
        for (base, ups) in by_base {
            if ups.len() < 2 {
                continue;
            }
            let list: Vec<String> = ups
                .iter()
                .map(|(i, u)| format!("#{i} by n{} -> {}", u.node, short(&u.to)))
                .collect();
            out.push(format!(
                "double update: {} successful updates moved the branch from {}: {}",
                ups.len(),
                base.map(short).unwrap_or("the empty branch"),
                list.join(", ")
            ));
        }
        if out.len() > MAX_VIOLATIONS {
            let more = out.len() - MAX_VIOLATIONS;
            out.truncate(MAX_VIOLATIONS);
            out.push(format!("... and {more} more violations"));
        }
        out
    }

    /// Counters of the run so far.
    pub fn stats(&self) -> RepoStats {
        self.lock().stats.clone()
    }
}

/// One node's handle on the host.
#[derive(Clone)]
pub struct SimRepo {
    host: SimRepoHost,
    node: NodeId,
}

impl SimRepo {
    /// The node this handle calls as.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Counts the call, then waits its seeded latency.
    async fn latency(&self, op: Op) {
        let wait = self.host.lock().start(self.node, op);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs `f` on the host, under its lock, after the call's latency.
    async fn call<T>(&self, op: Op, f: impl FnOnce(&mut Host, NodeId) -> T) -> T {
        self.latency(op).await;
        let mut h = self.host.lock();
        f(&mut h, self.node)
    }
}

impl RepoRemote for SimRepo {
    fn describe(&self) -> String {
        "sim://repo".into()
    }

    fn head(&self) -> BoxFuture<'_, Result<Option<RepoHead>, RepoError>> {
        Box::pin(self.call(Op::Head, |h, n| h.head(n)))
    }

    fn commit(&self, req: CommitRequest) -> BoxFuture<'_, Result<String, RepoError>> {
        // The request is on its way: the host applies it after the
        // latency whether or not the caller is still waiting.
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let res = this.call(Op::Commit, move |h, n| h.commit(n, req)).await;
            let _ = tx.send(res);
        });
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(RepoError::Unknown("the host went away".into())))
        })
    }

    fn history<'a>(
        &'a self,
        from: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CommitInfo>, RepoError>> {
        Box::pin(self.call(Op::History, move |h, n| h.history(n, from, max)))
    }

    fn list<'a>(
        &'a self,
        commit: &'a str,
        prefix: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, RepoError>> {
        Box::pin(self.call(Op::List, move |h, n| h.list(n, commit, prefix, max)))
    }

    fn read_blob<'a>(
        &'a self,
        id: &'a str,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, RepoError>> {
        Box::pin(self.call(Op::ReadBlob, move |h, n| h.read_blob(n, id, max_bytes)))
    }

    fn calls(&self) -> u64 {
        self.host
            .lock()
            .clients
            .get(&self.node)
            .map(|c| c.calls)
            .unwrap_or(0)
    }
}

impl PresenceChannel for SimRepo {
    fn publish(&self, record: PresenceRecord) -> BoxFuture<'_, Result<(), PresenceError>> {
        Box::pin(async move {
            // Checked by the client before any call, as the real channels do.
            let refused = if record.node_id != self.node {
                Some(format!(
                    "a record of node {} cannot be published as node {}",
                    record.node_id, self.node
                ))
            } else {
                PresenceRecord::from_json(&record.to_json())
                    .err()
                    .map(|e| format!("this node's record would be refused: {e}"))
            };
            if let Some(reason) = refused {
                self.host
                    .lock()
                    .event(self.node, "repo.publish_refused", &reason);
                return Err(PresenceError::Unavailable(reason));
            }
            let bytes = record.to_json();
            self.call(Op::Publish, move |h, n| h.publish(n, bytes))
                .await
        })
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Vec<PresenceRecord>, PresenceError>> {
        Box::pin(self.call(Op::Fetch, |h, n| h.fetch(n)))
    }
}
