//! The fault injector: one fault at a time, each undone after a while.

use super::*;

/// Faults, one at a time, each undone after a while.
pub(super) async fn faults(world: World, until: tokio::time::Instant) {
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(world.opts.seed, "faults"));
    let n = world.opts.nodes;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(exp_gap(&mut rng, world.opts.fault_every)).await;
        let now = tokio::time::Instant::now();
        if now >= until {
            break;
        }
        let hold = Duration::from_millis(rng.random_range(2_000..60_000));
        let ids: Vec<NodeId> = (1..=n).collect();
        let a = ids[rng.random_range(0..ids.len())];
        // Half of the node faults strike the leader: that is where a
        // room loses messages if it can.
        let a = match (rng.random_bool(0.5), world.leader()) {
            (true, Some((leader, _))) => leader,
            _ => a,
        };
        if world.opts.fault_classes.is_empty() {
            break;
        }
        // The die is rolled again until it names an enabled class.
        let roll = loop {
            let r = rng.random_range(0..100u32);
            if world.opts.fault_classes.contains(&FaultClass::of_roll(r)) {
                break r;
            }
        };
        match roll {
            // Crashes, power losses and graceful leaves: at most a
            // minority down at once.
            r @ 0..=39 => {
                let down = world.lock().down_until.len() as u64;
                if down + 1 > (n - 1) / 2 || world.handle(a).is_none() {
                    continue;
                }
                let (power, graceful) = match r {
                    0..=17 => (false, false),
                    18..=33 => (true, false),
                    _ => (false, true),
                };
                {
                    let mut g = world.lock();
                    g.down_until.insert(a, now + hold);
                    if graceful {
                        g.faults.graceful_leaves += 1;
                    } else if power {
                        g.faults.power_losses += 1;
                    } else {
                        g.faults.crashes += 1;
                    }
                }
                let w = world.clone();
                actix_rt::spawn(async move {
                    w.stop_node(a, power, graceful).await;
                    tokio::time::sleep(hold).await;
                    if let Err(e) = w.start_node(a).await {
                        w.violation("restart", e, None);
                    }
                    w.lock().down_until.remove(&a);
                });
            }
            // Partitions: one node cut off, or a split; sometimes one way.
            40..=64 => {
                let mut side: Vec<NodeId> = vec![a];
                if n >= 4 && rng.random_bool(0.4) {
                    let b = ids[rng.random_range(0..ids.len())];
                    if b != a {
                        side.push(b);
                    }
                }
                let rest: Vec<NodeId> = ids.iter().copied().filter(|i| !side.contains(i)).collect();
                let oneway = rng.random_bool(0.3);
                if oneway {
                    world.lock().faults.asymmetric_partitions += 1;
                    for s in &side {
                        for r in &rest {
                            world.net.block(*s, *r, true);
                        }
                    }
                } else {
                    world.lock().faults.partitions += 1;
                    world.net.partition(&side, &rest);
                }
                world.trace.event(
                    0,
                    "fault.partition",
                    format!(
                        "{side:?} | {rest:?} oneway={oneway} for {}ms",
                        hold.as_millis()
                    ),
                );
                let w = world.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(hold).await;
                    w.net.heal();
                    w.trace.event(0, "fault.heal", "");
                });
            }
            // A link fails (ICE restart, NAT rebinding).
            65..=77 => {
                let b = ids[rng.random_range(0..ids.len())];
                if a != b {
                    world.lock().faults.link_failures += 1;
                    world.trace.event(0, "fault.link", format!("{a}-{b}"));
                    world.net.fail_link(a, b);
                }
            }
            // A power cut takes every node down at once (one office, one
            // host): whatever no disk had made durable is gone everywhere.
            94..=99 => {
                let up = world.up_nodes();
                if !world.lock().down_until.is_empty() || up.is_empty() {
                    continue;
                }
                {
                    let mut g = world.lock();
                    g.faults.power_losses += up.len() as u64;
                    for id in &up {
                        g.down_until.insert(*id, now + hold);
                    }
                }
                world.trace.event(
                    0,
                    "fault.power_cut",
                    format!("{up:?} for {}ms", hold.as_millis()),
                );
                for id in &up {
                    world.stop_node(*id, true, false).await;
                }
                let w = world.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(hold).await;
                    for id in up {
                        if let Err(e) = w.start_node(id).await {
                            w.violation("restart", e, None);
                        }
                        w.lock().down_until.remove(&id);
                    }
                });
            }
            // A majority of the voters, the leader among them, crash at
            // once: for good, or back after 60 to 180 s (the survivors
            // re-form meanwhile when they are enough).
            78..=84 => {
                let Some((leader, _)) = world.leader() else {
                    continue;
                };
                if !world.lock().down_until.is_empty() {
                    continue;
                }
                // The handle is not held across the crash below: the
                // crash waits for every handle on the node's storage.
                let Some(all_voters) = world.handle(leader).map(|h| h.replica.voters()) else {
                    continue;
                };
                let need = all_voters.len() / 2;
                let mut voters: Vec<NodeId> =
                    all_voters.into_iter().filter(|v| *v != leader).collect();
                if voters.len() < need || need == 0 {
                    continue;
                }
                let mut victims = vec![leader];
                while victims.len() < need + 1 {
                    let v = voters.remove(rng.random_range(0..voters.len()));
                    victims.push(v);
                }
                let for_good = rng.random_bool(0.5);
                let back_after = Duration::from_millis(rng.random_range(60_000..180_000));
                let epoch = world.handle(leader).map_or(0, |h| h.replica.group().epoch);
                {
                    let mut g = world.lock();
                    g.majority_lost = Some((now, epoch));
                    g.faults.majority_losses += 1;
                    g.faults.crashes += victims.len() as u64;
                    for v in &victims {
                        g.down_until.insert(*v, now + back_after);
                    }
                }
                world.trace.event(
                    0,
                    "fault.majority_loss",
                    format!(
                        "{victims:?} {}",
                        if for_good {
                            "for good".to_owned()
                        } else {
                            format!("for {}ms", back_after.as_millis())
                        }
                    ),
                );
                for v in &victims {
                    world.stop_node(*v, false, false).await;
                }
                if !for_good {
                    let w = world.clone();
                    actix_rt::spawn(async move {
                        tokio::time::sleep(back_after).await;
                        for v in victims {
                            if let Err(e) = w.start_node(v).await {
                                w.violation("restart", e, None);
                            }
                            w.lock().down_until.remove(&v);
                        }
                    });
                }
            }
            // The repository host is down for a while.
            _ => {
                world.lock().faults.repo_outages += 1;
                world.host.set_outage(true);
                world
                    .trace
                    .event(0, "fault.outage", format!("{}ms", hold.as_millis()));
                let w = world.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(hold).await;
                    w.host.set_outage(false);
                    w.trace.event(0, "fault.outage_end", "");
                });
            }
        }
    }
}
