//! The store behaviour suites and the history/conversation operations,
//! against the real Cassandra at `CHATPIPE_CASSANDRA` (default
//! 127.0.0.1:9042). Fails, never skips, when Cassandra is unreachable.

use chatpipe_cassandra::bucket::{
    BUCKET_WINDOW_MS, bucket_of, bucket_of_unix_ms, bucket_start_unix_ms,
};
use chatpipe_cassandra::conformance::membership_suite;
use chatpipe_cassandra::{
    CassandraConfig, CassandraStore, CreateOutcome, HistoryQuery, Member, NewConversation,
    apply_schema,
};
use chatpipe_core::ids::{ConversationId, MessageId, MessageIdGenerator, UserId};
use chatpipe_core::membership::{Headcount, HistoryVisibility, Role};
use chatpipe_core::records::MessageRecord;
use chatpipe_core::store::MembershipStore;
use chatpipe_core::time::now_unix_ms;

fn config() -> CassandraConfig {
    chatpipe_testkit::cassandra_config()
}

async fn store() -> CassandraStore {
    CassandraStore::connect(&config())
        .await
        .expect("Cassandra must be reachable (topology/engines.sh up cassandra)")
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn record(
    conversation: &ConversationId,
    sender: &UserId,
    message_id: MessageId,
    body: &str,
) -> MessageRecord {
    MessageRecord::builder(message_id, conversation)
        .sender(sender)
        .client_msg_id(format!("c{message_id}"))
        .body(body)
        .build()
}

async fn create(
    store: &CassandraStore,
    conversation: &ConversationId,
    creator: &UserId,
    created_at_ms: u64,
) {
    let outcome = store
        .create_conversation(&NewConversation {
            conversation_id: conversation.clone(),
            title: Some("history".into()),
            created_by: creator.clone(),
            members: vec![],
            created_at_ms,
        })
        .await
        .unwrap();
    assert!(matches!(outcome, CreateOutcome::Created { .. }));
}

#[tokio::test]
async fn membership_behaves() {
    membership_suite(&store().await, &unique()).await;
}

#[tokio::test]
async fn schema_apply_is_idempotent() {
    let store = store().await;
    let keyspace = format!("chatpipe_t{}", &unique()[..16]);
    let first = apply_schema(store.session(), &keyspace).await.unwrap();
    assert!(first.created_keyspace);
    assert_eq!(first.created_tables.len(), 8, "{first:?}");
    let second = apply_schema(store.session(), &keyspace).await.unwrap();
    assert!(
        !second.changed_anything(),
        "second apply changed something: {second:?}"
    );
    // The default keyspace exists already (connect applied it).
    assert!(!store.apply_schema().await.unwrap().changed_anything());
    store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await
        .unwrap();
}

#[tokio::test]
async fn conversations_are_created_listed_and_counted() {
    let store = store().await;
    let unique = unique();
    let alice = UserId::parse(format!("alice-{unique}")).unwrap();
    let bob = UserId::parse(format!("bob-{unique}")).unwrap();
    let carol = UserId::parse(format!("carol-{unique}")).unwrap();
    let group = ConversationId::parse(format!("g-{unique}")).unwrap();
    let now = now_unix_ms();
    let new = NewConversation {
        conversation_id: group.clone(),
        title: Some("Weekend plans".into()),
        created_by: alice.clone(),
        members: vec![bob.clone(), carol.clone(), bob.clone(), alice.clone()],
        created_at_ms: now,
    };
    let CreateOutcome::Created {
        conversation,
        members,
    } = store.create_conversation(&new).await.unwrap()
    else {
        panic!("new conversation");
    };
    assert_eq!(
        members,
        vec![alice.clone(), bob.clone(), carol.clone()],
        "creator first, no duplicates"
    );
    assert_eq!(conversation.title.as_deref(), Some("Weekend plans"));
    assert_eq!(
        store.conversation(&group).await.unwrap(),
        Some(conversation.clone())
    );
    assert_eq!(
        store.create_conversation(&new).await.unwrap(),
        CreateOutcome::AlreadyExists(conversation.clone())
    );

    let listed = store.list_conversations(&bob).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].conversation, conversation);
    assert_eq!(listed[0].member_count, 3);
    store.remove_member(&group, &carol).await.unwrap();
    assert_eq!(store.member_count(&group).await.unwrap(), 2);
    assert!(store.list_conversations(&carol).await.unwrap().is_empty());
    assert_eq!(
        store
            .conversation(&ConversationId::parse(format!("none-{unique}")).unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn history_is_written_once_and_read_in_order_across_buckets() {
    let store = store().await;
    let unique = unique();
    let alice = UserId::parse(format!("alice-{unique}")).unwrap();
    let room = ConversationId::parse(format!("h-{unique}")).unwrap();
    // Three buckets ago, so the messages straddle two bucket boundaries.
    let boundary = bucket_start_unix_ms(bucket_of_unix_ms(now_unix_ms()) - 1);
    create(&store, &room, &alice, boundary - BUCKET_WINDOW_MS).await;
    let conversation = store.conversation(&room).await.unwrap().unwrap();

    let mut generator = MessageIdGenerator::new(9);
    let mut ids = Vec::new();
    for offset in [-3_000i64, -2_000, -1_000] {
        ids.push(generator.next_id((boundary as i64 + offset) as u64));
    }
    for offset in [1_000u64, 2_000, 3_000, 4_000] {
        ids.push(generator.next_id(boundary + offset));
    }
    // and one in the current bucket
    ids.push(generator.next_id(now_unix_ms()));
    assert_eq!(bucket_of(ids[0]) + 1, bucket_of(ids[3]));
    let records: Vec<MessageRecord> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| record(&room, &alice, *id, &format!("m{index}")))
        .collect();
    // Written twice, in two differently shaped batches: still once each.
    store.write_messages(&records, 4).await.unwrap();
    let mut shuffled = records.clone();
    shuffled.reverse();
    shuffled.extend(records.iter().take(3).cloned());
    store.write_messages(&shuffled, 64).await.unwrap();

    let newest_first: Vec<MessageId> = ids.iter().rev().copied().collect();
    let all = store
        .read_history(
            &conversation,
            &HistoryQuery {
                before: None,
                after: None,
                limit: 50,
            },
            now_unix_ms(),
        )
        .await
        .unwrap();
    assert_eq!(
        all.messages
            .iter()
            .map(|m| m.message_id)
            .collect::<Vec<_>>(),
        newest_first
    );
    assert!(!all.has_more);
    assert_eq!(all.messages[0].body, "m7");
    assert_eq!(all.messages[0].sender_id, alice);

    // Scroll back in pages of 3 across both boundaries.
    let mut collected = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .read_history(
                &conversation,
                &HistoryQuery {
                    before,
                    after: None,
                    limit: 3,
                },
                now_unix_ms(),
            )
            .await
            .unwrap();
        assert!(page.messages.len() <= 3);
        collected.extend(page.messages.iter().map(|m| m.message_id));
        if !page.has_more {
            break;
        }
        before = page.messages.last().map(|m| m.message_id);
    }
    assert_eq!(collected, newest_first);

    // Catch up forwards from the oldest one in pages of 2.
    let mut caught_up = Vec::new();
    let mut after = Some(ids[0]);
    loop {
        let page = store
            .read_history(
                &conversation,
                &HistoryQuery {
                    before: None,
                    after,
                    limit: 2,
                },
                now_unix_ms(),
            )
            .await
            .unwrap();
        if page.messages.is_empty() {
            break;
        }
        // Each page is newest first; its first message is the next cursor.
        let mut ascending: Vec<MessageId> = page.messages.iter().map(|m| m.message_id).collect();
        ascending.reverse();
        caught_up.extend(ascending);
        after = page.messages.first().map(|m| m.message_id);
    }
    assert_eq!(caught_up, ids[1..].to_vec());

    // A window between two cursors.
    let window = store
        .read_history(
            &conversation,
            &HistoryQuery {
                before: Some(ids[5]),
                after: Some(ids[1]),
                limit: 10,
            },
            now_unix_ms(),
        )
        .await
        .unwrap();
    assert_eq!(
        window
            .messages
            .iter()
            .map(|m| m.message_id)
            .collect::<Vec<_>>(),
        vec![ids[4], ids[3], ids[2]]
    );
}

#[tokio::test]
async fn a_round_over_many_conversations_is_packed_into_few_requests_and_reads_back_whole() {
    let store = store().await;
    let unique = unique();
    let alice = UserId::parse(format!("alice-{unique}")).unwrap();
    let now = now_unix_ms();
    let mut generator = MessageIdGenerator::new(11);
    // 25 conversations with one message each (chat traffic), and one
    // with 103 (a busy room): 10 + 10 + 5 packed, 100 + 3 on their own
    // or packed with the rest.
    let mut rooms = Vec::new();
    let mut records = Vec::new();
    for index in 0..26 {
        let room = ConversationId::parse(format!("p{index}-{unique}")).unwrap();
        create(&store, &room, &alice, now - 1_000).await;
        let count = if index == 25 { 103 } else { 1 };
        for n in 0..count {
            let id = generator.next_id(now);
            records.push(record(&room, &alice, id, &format!("{index}/{n}")));
        }
        rooms.push((room, count));
    }
    let report = store.write_messages(&records, 8).await.unwrap();
    assert_eq!(report.rows, 128);
    // One request per message would be 26 + 2 (the 103 rows need two);
    // packed, the 25 single rows and the busy room's tail share 3.
    assert!(
        report.requests <= 4,
        "{} requests for 26 conversations",
        report.requests
    );
    for (room, count) in &rooms {
        let conversation = store.conversation(room).await.unwrap().unwrap();
        let page = store
            .read_history(
                &conversation,
                &HistoryQuery {
                    before: None,
                    after: None,
                    limit: 200,
                },
                now_unix_ms(),
            )
            .await
            .unwrap();
        assert_eq!(page.messages.len(), *count, "{room}");
    }
}

#[tokio::test]
async fn roles_settings_and_join_times_are_stored_and_read_back() {
    let store = store().await;
    let unique = unique();
    let user = |name: &str| UserId::parse(format!("{name}-{unique}")).unwrap();
    let (alice, bob, carol, dave, stranger) = (
        user("alice"),
        user("bob"),
        user("carol"),
        user("dave"),
        user("stranger"),
    );
    let group = ConversationId::parse(format!("r-{unique}")).unwrap();
    let created_at = now_unix_ms();
    let CreateOutcome::Created { conversation, .. } = store
        .create_conversation_with(
            &NewConversation {
                conversation_id: group.clone(),
                title: None,
                created_by: alice.clone(),
                members: vec![bob.clone(), carol.clone()],
                created_at_ms: created_at,
            },
            HistoryVisibility::Joined,
        )
        .await
        .unwrap()
    else {
        panic!("new conversation");
    };
    assert_eq!(conversation.history_visibility, HistoryVisibility::Joined);
    assert_eq!(
        store.conversation(&group).await.unwrap(),
        Some(conversation.clone())
    );
    let member = |user: UserId, role: Role, joined_at_ms: u64| Member {
        user_id: user,
        role,
        joined_at_ms,
    };
    assert_eq!(
        store.member(&conversation, &alice).await.unwrap(),
        Some(member(alice.clone(), Role::Owner, created_at))
    );
    assert_eq!(store.member(&conversation, &stranger).await.unwrap(), None);

    // Roles change only for members: no row appears for anyone else.
    assert!(store.set_role(&group, &bob, Role::Admin).await.unwrap());
    assert!(
        !store
            .set_role(&group, &stranger, Role::Owner)
            .await
            .unwrap()
    );
    assert!(!store.is_member(&group, &stranger).await.unwrap());
    assert_eq!(
        store.headcount(&conversation).await.unwrap(),
        Headcount {
            owners: 1,
            members: 3
        }
    );
    let mut everyone = [
        member(alice.clone(), Role::Owner, created_at),
        member(bob.clone(), Role::Admin, created_at),
        member(carol.clone(), Role::Member, created_at),
    ];
    everyone.sort_by(|left, right| left.user_id.cmp(&right.user_id));
    let first = store.members_page(&conversation, None, 2).await.unwrap();
    assert_eq!(first, everyone[..2]);
    let rest = store
        .members_page(&conversation, Some(&first[1].user_id), 2)
        .await
        .unwrap();
    assert_eq!(rest, everyone[2..]);
    let listed = store.list_conversations(&bob).await.unwrap();
    assert_eq!(listed[0].role, Role::Admin);

    // A newcomer reads from their join time on, until the setting is
    // `shared` again; the members from the start were there anyway.
    let joined_at = created_at + 60_000;
    store
        .add_member(&group, &dave, &alice, joined_at)
        .await
        .unwrap();
    let readable = |user: UserId| {
        let store = store.clone();
        let group = group.clone();
        async move {
            store
                .readable_conversations(&user)
                .await
                .unwrap()
                .into_iter()
                .find(|entry| entry.conversation_id == group)
                .expect("readable")
                .visible_from_ms
        }
    };
    assert_eq!(readable(dave.clone()).await, Some(joined_at));
    assert_eq!(readable(alice.clone()).await, Some(created_at));
    let mut generator = MessageIdGenerator::new(3);
    let early = generator.next_id(joined_at - 1_000);
    let late = generator.next_id(joined_at + 1_000);
    for id in [early, late] {
        store
            .write_message(&record(&group, &alice, id, "hello"))
            .await
            .unwrap();
    }
    let query = HistoryQuery {
        before: None,
        after: None,
        limit: 10,
    };
    let ids = |page: chatpipe_cassandra::HistoryPage| {
        page.messages
            .iter()
            .map(|message| message.message_id)
            .collect::<Vec<_>>()
    };
    let floor = Some(MessageId::lower_bound_for_unix_ms(joined_at));
    let now = joined_at + 2_000;
    let newcomer = store
        .read_history_visible(&conversation, &query, floor, now)
        .await
        .unwrap();
    assert!(!newcomer.has_more);
    assert_eq!(ids(newcomer), [late]);
    let catching_up = HistoryQuery {
        after: Some(MessageId::from_u64(1)),
        ..query
    };
    assert_eq!(
        ids(store
            .read_history_visible(&conversation, &catching_up, floor, now)
            .await
            .unwrap()),
        [late]
    );
    assert_eq!(
        ids(store
            .read_history(&conversation, &query, now)
            .await
            .unwrap()),
        [late, early]
    );
    assert!(
        store
            .set_history_visibility(&group, HistoryVisibility::Shared)
            .await
            .unwrap()
    );
    assert_eq!(readable(dave.clone()).await, None);
    assert!(
        !store
            .set_history_visibility(
                &ConversationId::parse(format!("none-{unique}")).unwrap(),
                HistoryVisibility::Joined
            )
            .await
            .unwrap()
    );

    // Rows written before roles existed have none: the creator is the
    // owner, anyone else a member.
    for user in [&alice, &bob] {
        store
            .session()
            .query_unpaged(
                format!(
                    "UPDATE {}.members_by_conversation SET role = null \
                     WHERE conversation_id = ? AND user_id = ?",
                    store.config().keyspace
                ),
                (group.as_str(), user.as_str()),
            )
            .await
            .unwrap();
    }
    let role_of = |user: UserId| {
        let store = store.clone();
        let conversation = conversation.clone();
        async move {
            store
                .member(&conversation, &user)
                .await
                .unwrap()
                .unwrap()
                .role
        }
    };
    assert_eq!(role_of(alice.clone()).await, Role::Owner);
    assert_eq!(role_of(bob.clone()).await, Role::Member);
}

#[tokio::test]
async fn read_markers_only_move_forward_and_counts_follow_history() {
    let store = store().await;
    let conversation = ConversationId::parse(format!("c{}", unique())).unwrap();
    let (ann, bob) = (
        UserId::parse(format!("ann{}", &unique()[..8])).unwrap(),
        UserId::parse(format!("bob{}", &unique()[..8])).unwrap(),
    );
    let now = now_unix_ms();
    create(&store, &conversation, &ann, now - 60_000).await;
    let row = store.conversation(&conversation).await.unwrap().unwrap();
    let mut generator = MessageIdGenerator::new(7);
    let ids: Vec<MessageId> = (0..6)
        .map(|step| generator.next_id(now - 10_000 + step))
        .collect();
    let records: Vec<MessageRecord> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            let sender = if index == 3 { &bob } else { &ann };
            let builder = MessageRecord::builder(*id, &conversation)
                .sender(sender)
                .client_msg_id(format!("c{id}"));
            if index % 2 == 0 {
                builder.mentions(&[bob.as_str()]).build()
            } else {
                builder.build()
            }
        })
        .collect();
    store.write_messages(&records, 4).await.unwrap();
    // History returns each message's mentions, and none for the others.
    let page = store
        .read_history(
            &row,
            &HistoryQuery {
                before: None,
                after: None,
                limit: 10,
            },
            now,
        )
        .await
        .unwrap();
    let mentions: Vec<(MessageId, Vec<UserId>)> = page
        .messages
        .iter()
        .map(|message| (message.message_id, message.mentions.clone()))
        .collect();
    let expected: Vec<(MessageId, Vec<UserId>)> = ids
        .iter()
        .enumerate()
        .rev()
        .map(|(index, id)| {
            let mentioned = if index % 2 == 0 {
                vec![bob.clone()]
            } else {
                vec![]
            };
            (*id, mentioned)
        })
        .collect();
    assert_eq!(mentions, expected);
    let json = serde_json::to_value(&page.messages[0]).unwrap();
    assert!(json.get("mentions").is_none(), "none is absent: {json}");
    let json = serde_json::to_value(&page.messages[1]).unwrap();
    assert_eq!(json["mentions"], serde_json::json!([bob.as_str()]));
    // Written twice (a replay), in reverse order: nothing changes.
    for _ in 0..2 {
        let mut reversed = records.clone();
        reversed.reverse();
        store.write_read_state(&reversed, 4).await.unwrap();
    }
    let floor = MessageId::from_u64(1);
    let counts = store.read_counts(&row, &bob, floor, now).await.unwrap();
    // Bob sent one of the six; three mention him.
    assert_eq!((counts.unread.count, counts.unread.exact), (5, true));
    assert_eq!((counts.mentions.count, counts.mentions.exact), (3, true));
    // The newest message is the last activity, whatever the write order.
    let activity = store
        .last_activities(std::slice::from_ref(&conversation))
        .await
        .unwrap();
    assert_eq!(activity.get(&conversation), Some(&ids[5]));
    store.write_read_state(&records[..2], 4).await.unwrap();
    let activity = store
        .last_activities(std::slice::from_ref(&conversation))
        .await
        .unwrap();
    assert_eq!(
        activity.get(&conversation),
        Some(&ids[5]),
        "an older replay never wins"
    );

    // Several conversations in one call: their activity rows are packed
    // per replica, each keeps its own newest message.
    let others: Vec<ConversationId> = (0..12)
        .map(|index| ConversationId::parse(format!("c{index}{}", unique())).unwrap())
        .collect();
    let spread: Vec<MessageRecord> = others
        .iter()
        .enumerate()
        .flat_map(|(index, other)| {
            [ids[index % 6], ids[(index + 1) % 6]]
                .map(|id| MessageRecord::builder(id, other).sender(&ann).build())
        })
        .collect();
    let report = store.write_read_state(&spread, 4).await.unwrap();
    assert_eq!(report.rows, 12);
    assert!(report.requests <= 12);
    let found = store.last_activities(&others).await.unwrap();
    for (index, other) in others.iter().enumerate() {
        assert_eq!(found[other], ids[index % 6].max(ids[(index + 1) % 6]));
    }

    // Markers: the highest wins, a lower one later changes nothing.
    assert_eq!(store.read_marker(&bob, &conversation).await.unwrap(), None);
    store
        .write_read_markers(&[(&bob, &conversation, ids[2])], 2)
        .await
        .unwrap();
    store
        .write_read_markers(&[(&bob, &conversation, ids[0])], 2)
        .await
        .unwrap();
    assert_eq!(
        store.read_marker(&bob, &conversation).await.unwrap(),
        Some(ids[2])
    );
    let counts = store.read_counts(&row, &bob, ids[2], now).await.unwrap();
    // After the third: ids 3 (Bob's own), 4 (mentions him), 5.
    assert_eq!((counts.unread.count, counts.mentions.count), (2, 1));
    // A deleted message counts neither as unread nor as a mention.
    store
        .write_change(&chatpipe_core::records::MessageChangeRecord {
            schema_version: chatpipe_core::records::CHANGE_SCHEMA_VERSION,
            message_id: ids[4],
            conversation_id: conversation.clone(),
            actor_id: ann.clone(),
            change: chatpipe_core::records::MessageChange::Delete,
            ts: now,
            edge_id: chatpipe_core::EdgeId::parse("edge-test").unwrap(),
        })
        .await
        .unwrap();
    let counts = store.read_counts(&row, &bob, ids[2], now).await.unwrap();
    assert_eq!((counts.unread.count, counts.mentions.count), (1, 0));
}

/// The configured consistency reaches every kind of request: at `TWO` on
/// the single node (replication factor 1) a conversation's creation (an
/// LWT), a history batch, a single write and a history read are all
/// refused as unavailable (retriable), while the default `LOCAL_QUORUM`
/// store serves them.
#[tokio::test]
async fn the_configured_consistency_applies_to_writes_batches_and_reads() {
    let default_store = store().await;
    assert_eq!(
        default_store.config().consistency,
        chatpipe_cassandra::ConsistencyLevel::LocalQuorum
    );
    let unique = unique();
    let alice = UserId::parse(format!("alice-{unique}")).unwrap();
    let room = ConversationId::parse(format!("cl-{unique}")).unwrap();
    let now = now_unix_ms();
    create(&default_store, &room, &alice, now).await;
    let conversation = default_store.conversation(&room).await.unwrap().unwrap();
    let mut generator = MessageIdGenerator::new(11);
    let records: Vec<MessageRecord> = (0..3)
        .map(|index| record(&room, &alice, generator.next_id(now), &format!("m{index}")))
        .collect();
    default_store.write_messages(&records, 4).await.unwrap();

    let two = CassandraStore::connect(&CassandraConfig {
        consistency: "TWO".parse().unwrap(),
        apply_schema_on_connect: false,
        request_timeout_ms: 3_000,
        ..config()
    })
    .await
    .unwrap();
    let refused = |what: &str, result: Result<(), chatpipe_cassandra::CassandraError>| {
        let error = result.expect_err(what);
        assert!(error.is_retriable(), "{what}: {error}");
        assert!(
            error
                .to_string()
                .to_ascii_lowercase()
                .contains("unavailable")
                || error
                    .to_string()
                    .to_ascii_lowercase()
                    .contains("not enough"),
            "{what}: {error}"
        );
    };
    let other_room = ConversationId::parse(format!("cl2-{unique}")).unwrap();
    refused(
        "creation at TWO",
        two.create_conversation(&NewConversation {
            conversation_id: other_room,
            title: None,
            created_by: alice.clone(),
            members: vec![],
            created_at_ms: now,
        })
        .await
        .map(|_| ()),
    );
    refused(
        "history batch at TWO",
        two.write_messages(&records, 4).await.map(|_| ()),
    );
    refused("one write at TWO", two.write_message(&records[0]).await);
    let query = HistoryQuery {
        before: None,
        after: None,
        limit: 10,
    };
    refused(
        "history read at TWO",
        two.read_history(&conversation, &query, now_unix_ms())
            .await
            .map(|_| ()),
    );
    let page = default_store
        .read_history(&conversation, &query, now_unix_ms())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 3);
}

/// The configured replication creates the keyspace; an existing keyspace
/// with another replication is kept (a warning) unless the apply is told
/// to alter it.
#[tokio::test]
async fn an_existing_keyspace_keeps_its_replication_unless_altering_is_asked() {
    use chatpipe_cassandra::{OnReplicationMismatch, Replication, apply_schema_with};
    let store = store().await;
    let keyspace = format!("chatpipe_r{}", &unique()[..16]);
    let replicated: Replication = "NetworkTopologyStrategy:datacenter1=3".parse().unwrap();
    let apply = |replication: Replication, on_mismatch| {
        let (session, keyspace) = (store.session(), keyspace.clone());
        async move {
            apply_schema_with(session, &keyspace, &replication, on_mismatch)
                .await
                .unwrap()
        }
    };
    let created = apply(Replication::default(), OnReplicationMismatch::Warn).await;
    assert!(created.created_keyspace);
    assert_eq!(created.replication, Some(Replication::default()));

    let kept = apply(replicated.clone(), OnReplicationMismatch::Warn).await;
    assert!(!kept.changed_anything(), "{kept:?}");
    assert_eq!(kept.replication, Some(Replication::default()));

    let altered = apply(replicated.clone(), OnReplicationMismatch::Alter).await;
    assert!(altered.altered_replication, "{altered:?}");
    assert_eq!(altered.replication, Some(replicated.clone()));
    let again = apply(replicated, OnReplicationMismatch::Alter).await;
    assert!(!again.changed_anything(), "{again:?}");
    store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await
        .unwrap();
}
