//! Membership rules: who may add, remove and promote whom, the last owner,
//! the member cap, what newcomers see, and conversations that predate
//! roles. Each test drives the HTTP API as clients do, on the real engines.

use std::collections::BTreeMap;
use std::time::Duration;

use chatpipe::roles::{self, ApiHandle, RoleHandle};
use chatpipe_api::ApiConfig;
use chatpipe_client::ApiClient;
use chatpipe_client::http::{ApiRequest, Method};
use chatpipe_core::records::{MembershipChange, MembershipRecord};
use chatpipe_core::store::MembershipStore;
use chatpipe_core::time::now_unix_ms;
use chatpipe_kafka::ConsumerMetrics;
use chatpipe_kafka::consumer::{ConsumerSettings, group_consumer};
use serde_json::{Value, json};

use crate::common::*;

/// The HTTP API of a [`Stack`], as one user or another.
struct Api<'a> {
    stack: &'a Stack,
    client: ApiClient,
    /// Kept so an API started here stops with the test.
    _role: Option<RoleHandle<ApiHandle>>,
}

impl<'a> Api<'a> {
    /// An API role of its own (no search), with `config`.
    async fn start(stack: &'a Stack, config: ApiConfig) -> Api<'a> {
        let role = roles::spawn(
            ApiConfig {
                listen_addr: ANY_PORT.into(),
                ..config
            },
            &stack.deps(),
            stack.context(),
        )
        .await
        .expect("api starts");
        Api {
            stack,
            client: ApiClient::new(&format!("http://{}", role.addr)),
            _role: Some(role),
        }
    }

    /// The API of a [`FullStack`] (with search).
    fn of(stack: &'a Stack, full: &FullStack) -> Api<'a> {
        Api {
            stack,
            client: full.client.clone(),
            _role: None,
        }
    }

    async fn call(
        &self,
        user: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = ApiRequest::new(method, path);
        request.body = body.as_ref();
        answered(self.client.send(&self.stack.token(user), &request).await)
    }

    async fn get(&self, user: &str, path: &str) -> (u16, Value) {
        self.call(user, Method::GET, path, None).await
    }

    async fn post(&self, user: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(user, Method::POST, path, Some(body)).await
    }

    async fn patch(&self, user: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(user, Method::PATCH, path, Some(body)).await
    }

    /// `PATCH {member_path}` with `{"role": role}` as `user`.
    async fn set_role(&self, user: &str, member_path: &str, role: &str) -> (u16, Value) {
        self.patch(user, member_path, json!({ "role": role })).await
    }

    async fn delete(&self, user: &str, path: &str) -> (u16, Value) {
        self.call(user, Method::DELETE, path, None).await
    }

    /// Creates a group of `owner` and `others` with `extra` fields (such as
    /// `history_visibility`); its id.
    async fn group(&self, owner: &str, others: &[&str], extra: Value) -> String {
        let mut body = json!({"members": others, "title": "team"});
        if let Value::Object(fields) = extra {
            body.as_object_mut().unwrap().extend(fields);
        }
        let (status, created) = self.post(owner, "/v1/conversations", body).await;
        assert_eq!(status, 201, "{created}");
        created["conversation_id"].as_str().unwrap().to_owned()
    }

    /// Every member's role, as `user` lists them.
    async fn roles(&self, user: &str, conversation: &str) -> BTreeMap<String, String> {
        let (status, page) = self
            .get(user, &format!("/v1/conversations/{conversation}/members"))
            .await;
        assert_eq!(status, 200, "{page}");
        page["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|member| {
                (
                    member["user_id"].as_str().unwrap().to_owned(),
                    member["role"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// `user`'s entry of `conversation` in `GET /v1/conversations`.
    async fn listed(&self, user: &str, conversation: &str) -> Value {
        let (status, list) = self.get(user, "/v1/conversations").await;
        assert_eq!(status, 200, "{list}");
        list["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item["conversation_id"] == conversation)
            .cloned()
            .unwrap_or_else(|| panic!("{conversation} not listed for {user}: {list}"))
    }
}

use chatpipe_testkit::assert_api_error as assert_refused;

fn roles_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(user, role)| ((*user).to_owned(), (*role).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_owners_and_admins_add_and_admins_remove_only_plain_members() {
    let stack = Stack::new().await;
    let api = Api::start(&stack, ApiConfig::default()).await;
    let (alice, bob, carol, dave, erin) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("dave"),
        unique("erin"),
    );
    let conversation = api.group(&alice, &[&bob, &carol], json!({})).await;
    let members = format!("/v1/conversations/{conversation}/members");
    let id = chatpipe_core::ConversationId::parse(conversation.as_str()).unwrap();
    let user = |name: &str| chatpipe_core::UserId::parse(name).unwrap();
    assert_eq!(
        api.roles(&bob, &conversation).await,
        roles_of(&[(&alice, "owner"), (&bob, "member"), (&carol, "member")])
    );

    // A plain member adds nobody (any member could), promotes nobody and
    // changes no setting.
    let (status, body) = api.post(&bob, &members, json!({"user_id": dave})).await;
    assert_refused(status, &body, 403, "forbidden");
    assert!(!stack.store.is_member(&id, &user(&dave)).await.unwrap());
    let (status, body) = api
        .set_role(&bob, &format!("{members}/{carol}"), "admin")
        .await;
    assert_refused(status, &body, 403, "forbidden");
    let (status, body) = api
        .patch(
            &bob,
            &format!("/v1/conversations/{conversation}"),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_refused(status, &body, 403, "forbidden");

    // The owner makes bob an admin; an admin adds, but promotes nobody.
    let (status, body) = api
        .set_role(&alice, &format!("{members}/{bob}"), "admin")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "admin");
    let (status, body) = api.post(&bob, &members, json!({"user_id": dave})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "member");
    let (status, body) = api
        .set_role(&bob, &format!("{members}/{dave}"), "admin")
        .await;
    assert_refused(status, &body, 403, "forbidden");
    assert_eq!(
        api.roles(&dave, &conversation).await,
        roles_of(&[
            (&alice, "owner"),
            (&bob, "admin"),
            (&carol, "member"),
            (&dave, "member")
        ])
    );
    let listed = api.listed(&bob, &conversation).await;
    assert_eq!(
        (&listed["role"], &listed["history_visibility"]),
        (&json!("admin"), &json!("shared"))
    );

    // Removing: a member removes nobody, an admin plain members only, the
    // owner anyone.
    let (status, body) = api.delete(&carol, &format!("{members}/{dave}")).await;
    assert_refused(status, &body, 403, "forbidden");
    // The probe of the issue: a plain member removing the creator.
    let (status, body) = api.delete(&carol, &format!("{members}/{alice}")).await;
    assert_refused(status, &body, 403, "forbidden");
    let (status, body) = api.delete(&bob, &format!("{members}/{alice}")).await;
    assert_refused(status, &body, 403, "forbidden");
    assert_eq!(api.delete(&bob, &format!("{members}/{carol}")).await.0, 204);
    assert_eq!(api.delete(&alice, &format!("{members}/{bob}")).await.0, 204);
    assert_eq!(
        api.roles(&alice, &conversation).await,
        roles_of(&[(&alice, "owner"), (&dave, "member")])
    );
    // A user who is not a member has no role to change.
    let (status, body) = api
        .set_role(&alice, &format!("{members}/{erin}"), "admin")
        .await;
    assert_refused(status, &body, 404, "not_found");

    // A 1:1 conversation has no roles to change.
    let (status, created) = api
        .post(&alice, "/v1/conversations", json!({"members": [erin]}))
        .await;
    assert_eq!(status, 201, "{created}");
    let direct = created["conversation_id"].as_str().unwrap();
    let (status, body) = api
        .set_role(
            &alice,
            &format!("/v1/conversations/{direct}/members/{erin}"),
            "admin",
        )
        .await;
    assert_refused(status, &body, 403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_owner_hands_over_before_leaving() {
    let stack = Stack::new().await;
    let api = Api::start(&stack, ApiConfig::default()).await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let conversation = api.group(&alice, &[&bob, &carol], json!({})).await;
    let members = format!("/v1/conversations/{conversation}/members");

    // The only owner neither leaves (was 204: the conversation was left
    // without an owner) nor steps down while others remain.
    let (status, body) = api.delete(&alice, &format!("{members}/{alice}")).await;
    assert_refused(status, &body, 409, "conflict");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("owner"),
        "{body}"
    );
    let (status, body) = api
        .set_role(&alice, &format!("{members}/{alice}"), "member")
        .await;
    assert_refused(status, &body, 409, "conflict");

    // Handing over: bob becomes an owner; then alice may leave.
    let (status, body) = api
        .set_role(&alice, &format!("{members}/{bob}"), "owner")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.delete(&alice, &format!("{members}/{alice}")).await.0,
        204
    );
    assert_eq!(
        api.roles(&bob, &conversation).await,
        roles_of(&[(&bob, "owner"), (&carol, "member")])
    );
    // Now bob is the last owner; plain members leave freely, and so does
    // the very last member.
    let (status, body) = api.delete(&bob, &format!("{members}/{bob}")).await;
    assert_refused(status, &body, 409, "conflict");
    assert_eq!(
        api.delete(&carol, &format!("{members}/{carol}")).await.0,
        204
    );
    assert_eq!(api.delete(&bob, &format!("{members}/{bob}")).await.0, 204);

    // The membership topic has each change that happened, in order, and
    // nothing for the refused ones.
    let consumer = group_consumer(
        &stack.kafka,
        &ConsumerSettings::new(unique("reader"), &[stack.topics.membership.as_str()]),
        &ConsumerMetrics::new(),
    )
    .unwrap();
    let mut changes = Vec::new();
    while changes.len() < 5 {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("membership records arrive")
            .unwrap();
        let record: MembershipRecord = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let text = match record.change {
            MembershipChange::Created { .. } => "created".to_owned(),
            MembershipChange::RoleChanged { user_id, role } => format!("{user_id} {role}"),
            MembershipChange::Removed { user_id } => format!("{user_id} removed"),
            other => format!("{other:?}"),
        };
        changes.push(text);
    }
    assert_eq!(
        changes,
        [
            "created".to_owned(),
            format!("{bob} owner"),
            format!("{alice} removed"),
            format!("{carol} removed"),
            format!("{bob} removed"),
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(2), consumer.recv())
            .await
            .is_err(),
        "a refused change published a record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_leaving_at_once_through_two_apis_leave_one_owner() {
    // Two API processes' worth of roles on the same store: each owner's
    // leave goes through a different one, all groups at once.
    let stack = Stack::new().await;
    let first = Api::start(&stack, ApiConfig::default()).await;
    let second = Api::start(&stack, ApiConfig::default()).await;
    let mut groups = Vec::new();
    for _ in 0..20 {
        let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
        let conversation = first.group(&alice, &[&bob, &carol], json!({})).await;
        let members = format!("/v1/conversations/{conversation}/members");
        let (status, body) = first
            .set_role(&alice, &format!("{members}/{bob}"), "owner")
            .await;
        assert_eq!(status, 200, "{body}");
        groups.push((conversation, alice, bob, carol));
    }
    let leaves = groups.iter().map(|(conversation, alice, bob, _)| {
        let members = format!("/v1/conversations/{conversation}/members");
        let (first, second) = (&first, &second);
        let (alice_path, bob_path) = (format!("{members}/{alice}"), format!("{members}/{bob}"));
        async move {
            tokio::join!(
                first.delete(alice, &alice_path),
                second.delete(bob, &bob_path),
            )
        }
    });
    let outcomes = futures::future::join_all(leaves).await;
    for ((conversation, alice, bob, carol), (left_alice, left_bob)) in groups.iter().zip(outcomes) {
        let mut statuses = [left_alice.0, left_bob.0];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [204, 409],
            "{conversation}: {left_alice:?} {left_bob:?}"
        );
        let (stayed, refusal) = if left_alice.0 == 204 {
            (bob, &left_bob.1)
        } else {
            (alice, &left_alice.1)
        };
        assert_refused(409, refusal, 409, "conflict");
        assert_eq!(
            first.roles(carol, conversation).await,
            roles_of(&[(stayed, "owner"), (carol, "member")]),
            "{conversation}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_at_its_member_cap_refuses_more() {
    let stack = Stack::new().await;
    let api = Api::start(
        &stack,
        ApiConfig {
            max_members_per_conversation: 3,
            ..ApiConfig::default()
        },
    )
    .await;
    let (alice, bob, carol, dave) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("dave"),
    );
    let conversation = api.group(&alice, &[&bob, &carol], json!({})).await;
    let members = format!("/v1/conversations/{conversation}/members");
    let (status, body) = api.post(&alice, &members, json!({"user_id": dave})).await;
    assert_refused(status, &body, 409, "conflict");
    assert!(
        body["error"]["message"].as_str().unwrap().contains('3'),
        "the message names the cap: {body}"
    );
    assert_eq!(api.roles(&alice, &conversation).await.len(), 3);
    // Adding a member again is no new member: still answered.
    assert_eq!(
        api.post(&alice, &members, json!({"user_id": bob})).await.0,
        200
    );
    // Creating beyond the cap is refused as well.
    let (status, body) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [bob, carol, dave], "title": "too many"}),
        )
        .await;
    assert_refused(status, &body, 409, "conflict");
    // Someone leaves: there is room again.
    assert_eq!(
        api.delete(&carol, &format!("{members}/{carol}")).await.0,
        204
    );
    let (status, body) = api.post(&alice, &members, json!({"user_id": dave})).await;
    assert_eq!(status, 200, "{body}");
}

/// `q` as `user` searches: the ids of the hits (all conversations, or one).
async fn search_ids(api: &Api<'_>, user: &str, q: &str, conversation: Option<&str>) -> Vec<String> {
    let path = match conversation {
        Some(conversation) => format!("/v1/search?q={q}&conversation_id={conversation}"),
        None => format!("/v1/search?q={q}"),
    };
    let (status, page) = api.get(user, &path).await;
    assert_eq!(status, 200, "{page}");
    hit_ids(&page)
}

/// The message ids of `conversation`'s newest history page, as `user`.
async fn history_ids(api: &Api<'_>, user: &str, conversation: &str) -> Vec<String> {
    let (status, page) = api
        .get(user, &format!("/v1/conversations/{conversation}/messages"))
        .await;
    assert_eq!(status, 200, "{page}");
    message_ids(page["messages"].as_array().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_visibility_hides_earlier_history_and_search_hits_from_newcomers() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let api = Api::of(&stack, &full);
    let (edge, _edge_shutdown) = stack.edge(stack.edge_config("a")).await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let conversation = api
        .group(&alice, &[&bob], json!({"history_visibility": "joined"}))
        .await;
    assert_eq!(
        api.listed(&alice, &conversation).await["history_visibility"],
        "joined"
    );
    let marker = unique("w");
    let word = &marker[2..12];
    let (early, late) = (format!("early{word}"), format!("late{word}"));

    let mut sender = Client::connect(&edge, &stack.token(&alice)).await;
    let before = sender
        .send_message(&conversation, "m1", &format!("the {early} plan"))
        .await;
    assert_eq!(before["op"], "ack", "{before}");
    let before_id = before["message_id"].as_str().unwrap().to_owned();
    // Indexed and stored before carol joins.
    eventually("bob finds the early message", WAIT, || async {
        (search_ids(&api, &bob, &early, None).await == [before_id.clone()]).then_some(())
    })
    .await;
    eventually("the early message in history", WAIT, || async {
        history_ids(&api, &bob, &conversation)
            .await
            .contains(&before_id)
            .then_some(())
    })
    .await;

    tokio::time::sleep(Duration::from_millis(20)).await;
    let members = format!("/v1/conversations/{conversation}/members");
    assert_eq!(
        api.post(&alice, &members, json!({"user_id": carol}))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = sender
        .send_message(&conversation, "m2", &format!("the {late} {early} plan"))
        .await;
    assert_eq!(after["op"], "ack", "{after}");
    let after_id = after["message_id"].as_str().unwrap().to_owned();
    eventually("carol finds the late message", WAIT, || async {
        (search_ids(&api, &carol, &late, None).await == [after_id.clone()]).then_some(())
    })
    .await;

    // What came before carol joined is hidden from her, in search and in
    // history alike (it was all visible); bob, there from the start, sees
    // both.
    let only_late = std::slice::from_ref(&after_id);
    assert_eq!(search_ids(&api, &carol, &early, None).await, only_late);
    assert_eq!(
        search_ids(&api, &carol, &early, Some(&conversation)).await,
        only_late
    );
    let carol_history = eventually("the late message in carol's history", WAIT, || async {
        let ids = history_ids(&api, &carol, &conversation).await;
        ids.contains(&after_id).then_some(ids)
    })
    .await;
    assert_eq!(carol_history, only_late);
    let mut both = vec![after_id.clone(), before_id.clone()];
    both.sort();
    let mut bob_found = search_ids(&api, &bob, &early, None).await;
    bob_found.sort();
    assert_eq!(bob_found, both);
    assert_eq!(
        history_ids(&api, &bob, &conversation).await,
        [after_id.clone(), before_id.clone()]
    );

    // The setting is the owner's and admins' to change, not carol's; back
    // to `shared`, she sees everything.
    let settings = format!("/v1/conversations/{conversation}");
    let (status, body) = api
        .patch(&carol, &settings, json!({"history_visibility": "shared"}))
        .await;
    assert_refused(status, &body, 403, "forbidden");
    let (status, body) = api
        .patch(&alice, &settings, json!({"history_visibility": "shared"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["history_visibility"], "shared");
    assert_eq!(
        history_ids(&api, &carol, &conversation).await,
        [after_id.clone(), before_id.clone()]
    );
    eventually(
        "carol finds the early message once history is shared",
        WAIT,
        || async {
            let mut found = search_ids(&api, &carol, &early, None).await;
            found.sort();
            (found == both).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_creator_of_a_conversation_made_before_roles_is_its_owner() {
    let stack = Stack::new().await;
    let api = Api::start(&stack, ApiConfig::default()).await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let conversation = unique("c");
    // The rows as the previous version wrote them: no role, no history
    // visibility.
    let keyspace = stack.store.config().keyspace.clone();
    let session = stack.store.session();
    let created_at = now_unix_ms() as i64;
    session
        .query_unpaged(
            format!(
                "INSERT INTO {keyspace}.conversations (conversation_id, title, created_at, created_by, first_bucket) \
                 VALUES (?, ?, ?, ?, ?)"
            ),
            (
                conversation.as_str(),
                "old",
                created_at,
                alice.as_str(),
                chatpipe_cassandra::bucket::first_bucket_for_creation(created_at as u64),
            ),
        )
        .await
        .unwrap();
    for member in [&alice, &bob] {
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.members_by_conversation (conversation_id, user_id, added_at, added_by) \
                     VALUES (?, ?, ?, ?)"
                ),
                (conversation.as_str(), member.as_str(), created_at, alice.as_str()),
            )
            .await
            .unwrap();
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.conversations_by_user (user_id, conversation_id, joined_at) \
                     VALUES (?, ?, ?)"
                ),
                (member.as_str(), conversation.as_str(), created_at),
            )
            .await
            .unwrap();
    }

    assert_eq!(
        api.roles(&bob, &conversation).await,
        roles_of(&[(&alice, "owner"), (&bob, "member")])
    );
    let listed = api.listed(&alice, &conversation).await;
    assert_eq!(
        (&listed["role"], &listed["history_visibility"]),
        (&json!("owner"), &json!("shared"))
    );
    let members = format!("/v1/conversations/{conversation}/members");
    // bob, a member, adds nobody (he could before); alice, the owner, does.
    let (status, body) = api.post(&bob, &members, json!({"user_id": carol})).await;
    assert_refused(status, &body, 403, "forbidden");
    assert_eq!(
        api.post(&alice, &members, json!({"user_id": carol}))
            .await
            .0,
        200
    );
    // She is the last owner, and hands over like any owner.
    let (status, body) = api.delete(&alice, &format!("{members}/{alice}")).await;
    assert_refused(status, &body, 409, "conflict");
    assert_eq!(
        api.set_role(&alice, &format!("{members}/{bob}"), "owner")
            .await
            .0,
        200
    );
    assert_eq!(
        api.delete(&alice, &format!("{members}/{alice}")).await.0,
        204
    );
    assert_eq!(
        api.roles(&bob, &conversation).await,
        roles_of(&[(&bob, "owner"), (&carol, "member")])
    );
}
