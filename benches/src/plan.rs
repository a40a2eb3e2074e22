//! The population of a run (users, conversations with their members) and
//! how it is split over worker processes. Pure and deterministic for a seed.

use std::net::Ipv4Addr;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::scenario::{ConversationMix, LifecycleConfig, Scenario};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
    Large,
}

/// A conversation to create: its kind and members (indices of users).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedConversation {
    pub kind: ConversationKind,
    pub members: Vec<u32>,
    /// Share of all sends that go to this conversation.
    pub send_weight: f64,
}

/// The name of user `index` in run `run_id`.
pub fn user_name(run_id: &str, index: u32) -> String {
    format!("lg{run_id}-{index}")
}

/// Draws the conversations of `mix` among `users` users.
pub fn conversations(users: usize, mix: &ConversationMix, seed: u64) -> Vec<PlannedConversation> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut planned = Vec::new();
    let all: Vec<u32> = (0..users as u32).collect();
    let mut direct_pairs = std::collections::HashSet::new();
    if users >= 2 {
        let mut attempts = 0;
        while direct_pairs.len() < mix.direct && attempts < mix.direct * 20 {
            attempts += 1;
            let first = rng.random_range(0..users as u32);
            let second = rng.random_range(0..users as u32);
            if first != second {
                direct_pairs.insert((first.min(second), first.max(second)));
            }
        }
    }
    let mut direct_pairs: Vec<(u32, u32)> = direct_pairs.into_iter().collect();
    direct_pairs.sort_unstable();
    for (first, second) in direct_pairs {
        planned.push(PlannedConversation {
            kind: ConversationKind::Direct,
            members: vec![first, second],
            send_weight: 0.0,
        });
    }
    let mut draw =
        |count: usize, min: usize, max: usize, kind: ConversationKind, rng: &mut StdRng| {
            for _ in 0..count {
                let size = rng.random_range(min..=max).min(users);
                let members: Vec<u32> = all.choose_multiple(rng, size).copied().collect();
                planned.push(PlannedConversation {
                    kind,
                    members,
                    send_weight: 0.0,
                });
            }
        };
    draw(
        mix.groups,
        mix.group_min,
        mix.group_max,
        ConversationKind::Group,
        &mut rng,
    );
    draw(
        mix.large,
        mix.large_min,
        mix.large_max,
        ConversationKind::Large,
        &mut rng,
    );
    assign_send_weights(&mut planned, mix);
    planned
}

fn assign_send_weights(planned: &mut [PlannedConversation], mix: &ConversationMix) {
    let count = |kind| {
        planned
            .iter()
            .filter(|conversation| conversation.kind == kind)
            .count()
    };
    let shares = [
        (
            ConversationKind::Direct,
            mix.direct_send_share,
            count(ConversationKind::Direct),
        ),
        (
            ConversationKind::Group,
            mix.group_send_share,
            count(ConversationKind::Group),
        ),
        (
            ConversationKind::Large,
            mix.large_send_share,
            count(ConversationKind::Large),
        ),
    ];
    let total_share: f64 = shares
        .iter()
        .filter(|(_, _, count)| *count > 0)
        .map(|(_, share, _)| share.max(0.0))
        .sum();
    if total_share <= 0.0 {
        return;
    }
    for conversation in planned.iter_mut() {
        let (_, share, count) = shares
            .iter()
            .find(|(kind, _, _)| *kind == conversation.kind)
            .expect("every kind is listed");
        conversation.send_weight = share.max(0.0) / total_share / *count as f64;
    }
}

/// Workers needed for `users` sockets at most `max_per_worker` each (at
/// least two, so that no single client process is the bottleneck).
pub fn worker_count(users: usize, max_per_worker: usize) -> usize {
    users
        .div_ceil(max_per_worker.max(1))
        .max(2)
        .min(users.max(1))
}

/// The edge (index into the target's WebSocket URLs) each user connects
/// to first, chosen so that every conversation's members, and so its
/// senders, are spread over the edges: two senders of one conversation on
/// two edges is what can reach the partition in another order than their
/// message ids (issue 10), and an edge fault then hits part of every
/// conversation. 1:1 pairs form a sparse graph, colored breadth-first with
/// neighbours on the next edge (proper on every tree, so on nearly every
/// pair); then each group's members not yet placed go to the edge its
/// members use least; everyone else to the least loaded edge.
pub fn assign_edges(users: usize, planned: &[PlannedConversation], edges: usize) -> Vec<u32> {
    if edges <= 1 {
        return vec![0; users];
    }
    let mut neighbours: Vec<Vec<u32>> = vec![Vec::new(); users];
    for conversation in planned.iter().filter(|c| c.members.len() == 2) {
        let (first, second) = (conversation.members[0], conversation.members[1]);
        neighbours[first as usize].push(second);
        neighbours[second as usize].push(first);
    }
    let mut edge_of: Vec<Option<u32>> = vec![None; users];
    let mut load = vec![0usize; edges];
    let least_loaded =
        |load: &[usize]| (0..load.len()).min_by_key(|edge| load[*edge]).unwrap_or(0) as u32;
    let mut queue = std::collections::VecDeque::new();
    for start in 0..users {
        if edge_of[start].is_some() || neighbours[start].is_empty() {
            continue;
        }
        let root = least_loaded(&load);
        edge_of[start] = Some(root);
        load[root as usize] += 1;
        queue.push_back(start);
        while let Some(user) = queue.pop_front() {
            let next = (edge_of[user].unwrap_or(0) + 1) % edges as u32;
            for &neighbour in &neighbours[user] {
                if edge_of[neighbour as usize].is_none() {
                    edge_of[neighbour as usize] = Some(next);
                    load[next as usize] += 1;
                    queue.push_back(neighbour as usize);
                }
            }
        }
    }
    for conversation in planned.iter().filter(|c| c.members.len() > 2) {
        let mut used = vec![0usize; edges];
        for member in &conversation.members {
            if let Some(edge) = edge_of[*member as usize] {
                used[edge as usize] += 1;
            }
        }
        for member in &conversation.members {
            if edge_of[*member as usize].is_some() {
                continue;
            }
            let edge = (0..edges)
                .min_by_key(|edge| (used[*edge], load[*edge]))
                .unwrap_or(0);
            edge_of[*member as usize] = Some(edge as u32);
            used[edge] += 1;
            load[edge] += 1;
        }
    }
    edge_of
        .into_iter()
        .map(|edge| {
            edge.unwrap_or_else(|| {
                let edge = least_loaded(&load);
                load[edge as usize] += 1;
                edge
            })
        })
        .collect()
}

/// How many conversations have members on at least two edges.
pub fn spread_conversations(planned: &[PlannedConversation], edge_of: &[u32]) -> usize {
    planned
        .iter()
        .filter(|conversation| {
            let mut edges = conversation
                .members
                .iter()
                .map(|member| edge_of[*member as usize]);
            edges
                .next()
                .is_some_and(|first| edges.any(|edge| edge != first))
        })
        .count()
}

/// Users are dealt round-robin to workers.
pub fn worker_of(user: u32, workers: usize) -> usize {
    user as usize % workers
}

/// The `count` loopback source addresses of worker `index`.
pub fn source_addresses(base: Ipv4Addr, index: usize, count: usize) -> Vec<Ipv4Addr> {
    let base = u32::from(base);
    (0..count)
        .map(|offset| Ipv4Addr::from(base + (index * count + offset) as u32))
        .collect()
}

/// What a worker serves, and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerTarget {
    Chatpipe {
        /// Every edge's WebSocket URL; a client starts on its user's edge
        /// ([`WorkerPlan::user_edges`]) and moves to the next one when its
        /// edge fails.
        ws_urls: Vec<String>,
        api_url: String,
        token_secret: String,
        /// With two edges or more: a connection that heard nothing this
        /// long while a send or a ping waits for its answer is given up
        /// (its edge is stuck, e.g. stopped), and the client moves on.
        /// 0: never.
        #[serde(default)]
        edge_stall_ms: u64,
    },
    /// The bare broadcast server: no hello, no auth, every text frame is
    /// broadcast to every connection.
    Bare { ws_url: String },
    /// Centrifugo: anonymous connect and subscribe to `channel`; publishes
    /// go through its HTTP API.
    Centrifugo {
        ws_url: String,
        api_url: String,
        api_key: String,
        channel: String,
    },
}

/// Everything one worker process needs (written as JSON, passed by path).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub index: usize,
    pub workers: usize,
    pub run_id: String,
    pub target: WorkerTarget,
    pub source_addresses: Vec<Ipv4Addr>,
    /// Global indices of this worker's users.
    pub users: Vec<u32>,
    /// Per local user: the conversations (global indices) it belongs to.
    pub user_conversations: Vec<Vec<u32>>,
    /// Per local user: the edge (index into the target's URLs) it
    /// connects to first.
    #[serde(default)]
    pub user_edges: Vec<u32>,
    /// `(local user, conversation, weight)`: who may send where.
    pub send_pairs: Vec<(u32, u32, f64)>,
    /// This worker's share of the global send rate.
    pub rate_share: f64,
    pub connect_rate_per_s: f64,
    pub body_bytes: usize,
    pub ack_every_frames: u64,
    pub ack_delay_ms: u64,
    pub max_unacked_per_client: usize,
    /// What clients do after sending (edits, deletes, reactions, reads).
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    /// Members per conversation (global index), when `lifecycle` reads
    /// are limited by size; else empty.
    #[serde(default)]
    pub conversation_sizes: Vec<u32>,
}

/// Splits a run over `workers` processes; `edge_of[user]` is the edge of
/// each user (see [`assign_edges`]; empty: the first).
pub fn worker_plans(
    scenario: &Scenario,
    run_id: &str,
    target: &WorkerTarget,
    users: usize,
    planned: &[PlannedConversation],
    edge_of: &[u32],
    workers: usize,
) -> anyhow::Result<Vec<WorkerPlan>> {
    let base: Ipv4Addr = scenario
        .load
        .source_ip_base
        .parse()
        .map_err(|error| anyhow::anyhow!("load.source_ip_base: {error}"))?;
    anyhow::ensure!(
        base.octets()[0] == 127,
        "source addresses must be loopback (127.x.y.z)"
    );
    let mut plans: Vec<WorkerPlan> = (0..workers)
        .map(|index| WorkerPlan {
            index,
            workers,
            run_id: run_id.to_owned(),
            target: target.clone(),
            source_addresses: source_addresses(
                base,
                index,
                scenario.load.addresses_per_worker.max(1),
            ),
            users: Vec::new(),
            user_conversations: Vec::new(),
            user_edges: Vec::new(),
            send_pairs: Vec::new(),
            rate_share: 0.0,
            connect_rate_per_s: scenario.load.connect_rate_per_s / workers as f64,
            body_bytes: scenario.load.body_bytes,
            ack_every_frames: scenario.load.ack_every_frames,
            ack_delay_ms: scenario.load.ack_delay_ms,
            max_unacked_per_client: scenario.load.max_unacked_per_client.max(1),
            lifecycle: scenario.lifecycle.clone(),
            conversation_sizes: if scenario.lifecycle.read_max_members > 0 {
                planned.iter().map(|c| c.members.len() as u32).collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    let mut local_index = vec![0u32; users];
    for user in 0..users as u32 {
        let plan = &mut plans[worker_of(user, workers)];
        local_index[user as usize] = plan.users.len() as u32;
        plan.users.push(user);
        plan.user_conversations.push(Vec::new());
        plan.user_edges
            .push(edge_of.get(user as usize).copied().unwrap_or(0));
    }
    for (conversation_index, conversation) in planned.iter().enumerate() {
        let per_member = conversation.send_weight / conversation.members.len().max(1) as f64;
        for &member in &conversation.members {
            let plan = &mut plans[worker_of(member, workers)];
            let local = local_index[member as usize];
            plan.user_conversations[local as usize].push(conversation_index as u32);
            if per_member > 0.0 {
                plan.send_pairs
                    .push((local, conversation_index as u32, per_member));
                plan.rate_share += per_member;
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(7);
    for plan in &mut plans {
        plan.send_pairs.shuffle(&mut rng);
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> ConversationMix {
        ConversationMix {
            direct: 100,
            groups: 10,
            group_min: 5,
            group_max: 50,
            large: 1,
            large_min: 150,
            large_max: 300,
            ..ConversationMix::default()
        }
    }

    #[test]
    fn conversations_follow_the_mix() {
        let planned = conversations(200, &mix(), 1);
        let direct: Vec<_> = planned
            .iter()
            .filter(|c| c.kind == ConversationKind::Direct)
            .collect();
        assert_eq!(direct.len(), 100);
        assert!(
            direct
                .iter()
                .all(|c| c.members.len() == 2 && c.members[0] != c.members[1])
        );
        let groups: Vec<_> = planned
            .iter()
            .filter(|c| c.kind == ConversationKind::Group)
            .collect();
        assert_eq!(groups.len(), 10);
        assert!(groups.iter().all(|c| (5..=50).contains(&c.members.len())));
        let large: Vec<_> = planned
            .iter()
            .filter(|c| c.kind == ConversationKind::Large)
            .collect();
        assert_eq!(large.len(), 1);
        assert!(
            (150..=200).contains(&large[0].members.len()),
            "capped at the user count"
        );
        let total: f64 = planned.iter().map(|c| c.send_weight).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let direct_share: f64 = direct.iter().map(|c| c.send_weight).sum();
        assert!((direct_share - 0.8).abs() < 1e-9);
    }

    #[test]
    fn workers_split_users_and_send_weights() {
        let scenario: Scenario = toml::from_str(
            "name='t'\n[load]\nusers=200\n[conversations]\ndirect=100\ngroups=10\nlarge=1\nlarge_min=150\nlarge_max=300\n",
        )
        .unwrap();
        let planned = conversations(200, &scenario.conversations, 1);
        let target = WorkerTarget::Bare {
            ws_url: "ws://x".into(),
        };
        let plans = worker_plans(&scenario, "r", &target, 200, &planned, &[], 3).unwrap();
        assert_eq!(
            plans.iter().map(|plan| plan.users.len()).sum::<usize>(),
            200
        );
        let share: f64 = plans.iter().map(|plan| plan.rate_share).sum();
        assert!((share - 1.0).abs() < 1e-9);
        for plan in &plans {
            let pair_weight: f64 = plan.send_pairs.iter().map(|pair| pair.2).sum();
            assert!((pair_weight - plan.rate_share).abs() < 1e-9);
            for &(local, conversation, _) in &plan.send_pairs {
                let user = plan.users[local as usize];
                assert!(planned[conversation as usize].members.contains(&user));
            }
        }
        assert_ne!(plans[0].source_addresses, plans[1].source_addresses);
        assert_eq!(worker_count(30_000, 15_000), 2);
        assert_eq!(worker_count(15_001, 15_000), 2);
        assert_eq!(worker_count(45_000, 15_000), 3);
    }

    #[test]
    fn edges_spread_every_conversation() {
        let mix = ConversationMix {
            direct: 1200,
            groups: 100,
            group_min: 5,
            group_max: 30,
            ..ConversationMix::default()
        };
        let planned = conversations(3000, &mix, 42);
        let edge_of = assign_edges(3000, &planned, 2);
        assert_eq!(edge_of.len(), 3000);
        let spread = spread_conversations(&planned, &edge_of);
        // Only a 1:1 pair closing an odd cycle can share an edge.
        assert!(
            spread as f64 >= 0.99 * planned.len() as f64,
            "{spread} of {}",
            planned.len()
        );
        let on_first = edge_of.iter().filter(|edge| **edge == 0).count();
        assert!((1200..=1800).contains(&on_first), "balanced: {on_first}");
        assert!(edge_of.iter().all(|edge| *edge < 2));
        // Every worker plan carries each of its users' edge.
        let scenario: Scenario = toml::from_str("name='t'\n[load]\nusers=3000\n").unwrap();
        let target = WorkerTarget::Bare {
            ws_url: "ws://x".into(),
        };
        let plans = worker_plans(&scenario, "r", &target, 3000, &planned, &edge_of, 2).unwrap();
        for plan in &plans {
            for (local, user) in plan.users.iter().enumerate() {
                assert_eq!(plan.user_edges[local], edge_of[*user as usize]);
            }
        }
        assert_eq!(assign_edges(10, &planned[..0], 1), vec![0; 10]);
        // Three edges: a 1:1 pair is still on two of them.
        let edge_of = assign_edges(3000, &planned, 3);
        assert!(spread_conversations(&planned, &edge_of) as f64 >= 0.99 * planned.len() as f64);
        assert!(edge_of.iter().all(|edge| *edge < 3));
    }
}
