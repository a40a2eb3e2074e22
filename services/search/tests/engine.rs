//! Behaviour of the adapter against the real engine (OpenSearch 2 or
//! Elasticsearch 8 on `CHATPIPE_ELASTICSEARCH_URL`, default http://127.0.0.1:9200).
//! Each test works in its own index prefix and deletes it at the end; an
//! unreachable engine fails the test.

use std::collections::HashSet;
use std::time::Duration;

use chatpipe_core::records::{
    CHANGE_SCHEMA_VERSION, MessageChange, MessageChangeRecord, MessageRecord,
};
use chatpipe_core::{ConversationId, EdgeId, MessageId, UserId};
use chatpipe_search::bulk::BulkSinkSettings;
use chatpipe_search::client::Method;
use chatpipe_search::template::{self, RolloverConditions, TemplateOutcome};
use chatpipe_search::{
    BulkDoc, BulkMetrics, ChangeMetrics, EsBulkSink, EsChangeSink, EsClient, MessageDocument,
    MessageSearcher, SearchEngineConfig, SearchError, SearchLimits, SearchMetrics, SearchParams,
    SearchSort,
};

struct Deployment {
    config: SearchEngineConfig,
    client: EsClient,
    sink: EsBulkSink,
    searcher: MessageSearcher,
}

impl Deployment {
    async fn new(shards: u32) -> Self {
        let config = SearchEngineConfig {
            url: std::env::var("CHATPIPE_ELASTICSEARCH_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:9200".to_owned()),
            index_prefix: format!("t{}-chat-messages", uuid::Uuid::new_v4().simple()),
            number_of_shards: shards,
            ..SearchEngineConfig::default()
        };
        let client = EsClient::new(&config).unwrap();
        let outcome = template::apply_template(&client, &config)
            .await
            .expect("the engine must be reachable");
        assert!(matches!(outcome, TemplateOutcome::CreatedFirstIndex(_)));
        let layout = config.layout();
        let sink = EsBulkSink::new(
            client.clone(),
            &layout.write_alias,
            BulkSinkSettings::default(),
            BulkMetrics::default(),
        );
        let searcher = MessageSearcher::new(
            client.clone(),
            &layout,
            SearchLimits::default(),
            SearchMetrics::default(),
        );
        Self {
            config,
            client,
            sink,
            searcher,
        }
    }

    async fn index(&self, records: &[MessageRecord]) {
        let docs: Vec<BulkDoc> = records
            .iter()
            .map(|record| BulkDoc::from_document(&MessageDocument::from_record(record)))
            .collect();
        let report = self.sink.write(&docs).await.unwrap();
        assert_eq!(report.indexed, records.len(), "{:?}", report.rejected);
    }

    async fn refresh(&self) {
        self.client
            .refresh(&self.config.layout().search_alias)
            .await
            .unwrap();
    }

    async fn teardown(self) {
        template::delete_deployment(&self.client, &self.config.layout())
            .await
            .unwrap();
    }
}

use chatpipe_testkit::message_record as record;

fn conversations(raw: &[&str]) -> Vec<ConversationId> {
    raw.iter()
        .map(|id| ConversationId::parse(*id).unwrap())
        .collect()
}

fn query(q: &str) -> SearchParams {
    SearchParams {
        q: q.to_owned(),
        ..SearchParams::default()
    }
}

fn ids(page: &chatpipe_search::SearchPage) -> Vec<u64> {
    page.hits
        .iter()
        .map(|hit| hit.message.message_id.as_u64())
        .collect()
}

#[tokio::test]
async fn template_apply_is_idempotent_and_rollover_keeps_everything_searchable() {
    let deployment = Deployment::new(1).await;
    let layout = deployment.config.layout();
    let again = template::apply_template(&deployment.client, &deployment.config)
        .await
        .unwrap();
    assert_eq!(again, TemplateOutcome::AliasExisted);
    assert_eq!(
        template::backing_indices(&deployment.client, &layout)
            .await
            .unwrap(),
        vec![layout.first_index.clone()]
    );

    deployment
        .index(&[record(1, "c1", "alice", "before the rollover")])
        .await;
    let unmet = RolloverConditions {
        max_docs: Some(1_000_000),
        max_size: None,
        max_age: None,
    };
    assert!(
        !template::rollover(&deployment.client, &layout, &unmet)
            .await
            .unwrap()
            .rolled_over
    );
    let always = RolloverConditions {
        max_docs: None,
        max_size: None,
        max_age: None,
    };
    let rolled = template::rollover(&deployment.client, &layout, &always)
        .await
        .unwrap();
    assert!(rolled.rolled_over);
    assert_eq!(
        rolled.new_index,
        format!("{}-000002", deployment.config.index_prefix)
    );
    deployment
        .index(&[record(2, "c1", "alice", "after the rollover")])
        .await;
    deployment.refresh().await;

    let page = deployment
        .searcher
        .search(&query("rollover"), &conversations(&["c1"]))
        .await
        .unwrap();
    let mut found = ids(&page);
    found.sort();
    assert_eq!(found, vec![1, 2]);
    assert_eq!(
        template::backing_indices(&deployment.client, &layout)
            .await
            .unwrap()
            .len(),
        2
    );
    deployment.teardown().await;
}

fn change(id: u64, conversation: &str, change: MessageChange) -> MessageChangeRecord {
    MessageChangeRecord {
        schema_version: CHANGE_SCHEMA_VERSION,
        message_id: MessageId::from_u64(id),
        conversation_id: ConversationId::parse(conversation).unwrap(),
        actor_id: UserId::parse("alice").unwrap(),
        change,
        ts: 1_800_000_000_000 + id,
        edge_id: EdgeId::parse("e").unwrap(),
    }
}

fn edit(id: u64, conversation: &str, body: &str) -> MessageChangeRecord {
    change(id, conversation, MessageChange::Edit { body: body.into() })
}

fn delete(id: u64, conversation: &str) -> MessageChangeRecord {
    change(id, conversation, MessageChange::Delete)
}

/// (bulk requests, applied by id, by-query fallbacks, refreshes).
fn change_counts(metrics: &ChangeMetrics) -> (u64, u64, u64, u64) {
    (
        metrics.bulk_requests.get(),
        metrics.applied_by_id.get(),
        metrics.by_query_fallbacks.get(),
        metrics.fallback_refreshes.get(),
    )
}

async fn found(deployment: &Deployment, q: &str) -> Vec<u64> {
    let page = deployment
        .searcher
        .search(&query(q), &conversations(&["c1", "c2"]))
        .await
        .unwrap();
    let mut found = ids(&page);
    found.sort();
    found
}

#[tokio::test]
async fn edits_and_deletes_go_by_id_and_still_reach_older_backing_indices() {
    let deployment = Deployment::new(1).await;
    let layout = deployment.config.layout();
    let changes = EsChangeSink::new(
        deployment.client.clone(),
        &layout.write_alias,
        &layout.search_alias,
        ChangeMetrics::default(),
    );
    deployment
        .index(&[
            record(1, "c1", "alice", "penguin one"),
            record(2, "c1", "alice", "penguin two"),
            record(3, "c2", "bob", "penguin three"),
        ])
        .await;

    // Messages of the write index: one bulk request by id, no refresh, no
    // query (right after indexing, unrefreshed: by id sees them anyway).
    let reaction = change(
        3,
        "c2",
        MessageChange::ReactionAdd {
            reaction: "👍".into(),
        },
    );
    let applied = changes
        .apply(&[edit(1, "c1", "walrus one"), delete(2, "c1"), reaction])
        .await
        .unwrap();
    assert_eq!(applied, 2, "reactions are not indexed");
    assert_eq!(change_counts(changes.metrics()), (1, 2, 0, 0));
    let edited = deployment
        .client
        .request(
            Method::Get,
            &format!("/{}/_doc/1", layout.first_index),
            &[("routing", "c1")],
            None,
        )
        .await
        .unwrap()
        .into_result()
        .unwrap();
    let source = &edited["_source"];
    assert_eq!(source["body"], "walrus one");
    assert_eq!(source["edited_at"], 1_800_000_000_001_u64);
    assert_eq!(source["sender_id"], "alice", "the other fields stay");
    assert_eq!(source["ts"], 1_700_000_000_001_u64);
    assert_eq!(source["conversation_id"], "c1");
    deployment.refresh().await;
    assert_eq!(found(&deployment, "walrus").await, [1]);
    assert_eq!(found(&deployment, "penguin").await, [3]);

    // After a rollover the write alias names a new index: message 3 stays
    // in the old one, 4 is in the new one, 9 in none (never indexed).
    let always = RolloverConditions {
        max_docs: None,
        max_size: None,
        max_age: None,
    };
    assert!(
        template::rollover(&deployment.client, &layout, &always)
            .await
            .unwrap()
            .rolled_over
    );
    deployment
        .index(&[record(4, "c1", "alice", "penguin four")])
        .await;
    let round = [
        edit(3, "c2", "walrus three"),
        edit(4, "c1", "walrus four"),
        delete(1, "c1"),
        delete(9, "c1"),
    ];
    assert_eq!(changes.apply(&round).await.unwrap(), 4);
    assert_eq!(
        change_counts(changes.metrics()),
        (2, 3, 3, 1),
        "4 by id; 3, 1 and 9 by query after one refresh"
    );
    deployment.refresh().await;
    assert_eq!(found(&deployment, "walrus").await, [3, 4]);
    assert!(found(&deployment, "penguin").await.is_empty());
    let page = deployment
        .searcher
        .search(&query("three"), &conversations(&["c2"]))
        .await
        .unwrap();
    assert_eq!(page.hits[0].message.sender_id.as_str(), "bob");

    // The same round again (a redelivered batch) changes nothing.
    assert_eq!(changes.apply(&round).await.unwrap(), 4);
    deployment.refresh().await;
    assert_eq!(found(&deployment, "walrus").await, [3, 4]);
    assert!(found(&deployment, "penguin").await.is_empty());
    deployment.teardown().await;
}

#[tokio::test]
async fn search_returns_only_the_callers_conversations() {
    let deployment = Deployment::new(2).await;
    deployment
        .index(&[
            record(10, "alice-bob", "alice", "the secret plan is ready"),
            record(11, "alice-bob", "bob", "secret? tell me more"),
            record(12, "carol-dave", "carol", "our secret, nobody else's"),
            record(13, "alice-bob", "bob", "nothing to see here"),
        ])
        .await;
    deployment.refresh().await;
    let alice = conversations(&["alice-bob"]);
    let carol = conversations(&["carol-dave"]);

    let page = deployment
        .searcher
        .search(&query("secret"), &alice)
        .await
        .unwrap();
    let mut found = ids(&page);
    found.sort();
    assert_eq!(found, vec![10, 11]);
    assert!(page.hits.iter().all(|hit| {
        hit.highlights
            .iter()
            .any(|fragment| fragment.contains("<em>secret</em>"))
    }));
    assert_eq!(page.next_cursor, None);

    assert_eq!(
        ids(&deployment
            .searcher
            .search(&query("secret"), &carol)
            .await
            .unwrap()),
        vec![12]
    );
    // Naming someone else's conversation is refused, not filtered to nothing.
    let mut theirs = query("secret");
    theirs.conversation_id = Some(ConversationId::parse("carol-dave").unwrap());
    assert!(matches!(
        deployment.searcher.search(&theirs, &alice).await,
        Err(SearchError::Forbidden(_))
    ));
    // A user in no conversation finds nothing.
    assert!(
        deployment
            .searcher
            .search(&query("secret"), &[])
            .await
            .unwrap()
            .hits
            .is_empty()
    );

    let mut filtered = query("secret");
    filtered.conversation_id = Some(ConversationId::parse("alice-bob").unwrap());
    filtered.sender_id = Some(UserId::parse("bob").unwrap());
    assert_eq!(
        ids(&deployment.searcher.search(&filtered, &alice).await.unwrap()),
        vec![11]
    );
    let mut ranged = query("secret");
    ranged.since_unix_ms = Some(1_700_000_000_011);
    ranged.until_unix_ms = Some(1_700_000_000_012);
    assert_eq!(
        ids(&deployment.searcher.search(&ranged, &alice).await.unwrap()),
        vec![11]
    );
    deployment.teardown().await;
}

#[tokio::test]
async fn cjk_text_is_found_by_words() {
    let deployment = Deployment::new(1).await;
    deployment
        .index(&[
            record(1, "c1", "alice", "明日は東京タワーに行きます"),
            record(2, "c1", "alice", "京都と東北"),
            record(3, "c1", "alice", "Привет, мир"),
        ])
        .await;
    deployment.refresh().await;
    let mine = conversations(&["c1"]);
    let tokyo = deployment
        .searcher
        .search(&query("東京"), &mine)
        .await
        .unwrap();
    assert_eq!(ids(&tokyo), vec![1]);
    assert!(!tokyo.hits[0].highlights.is_empty());
    assert_eq!(
        ids(&deployment
            .searcher
            .search(&query("мир"), &mine)
            .await
            .unwrap()),
        vec![3]
    );
    // One character still finds every message holding it.
    let mut single = ids(&deployment
        .searcher
        .search(&query("京"), &mine)
        .await
        .unwrap());
    single.sort();
    assert_eq!(single, vec![1, 2]);
    deployment.teardown().await;
}

#[tokio::test]
async fn the_same_message_twice_is_one_document_and_bad_documents_are_reported() {
    let deployment = Deployment::new(2).await;
    let message = record(7, "c1", "alice", "only once please");
    deployment.index(std::slice::from_ref(&message)).await;
    deployment.index(&[message.clone(), message]).await;
    let malformed = BulkDoc {
        id: "8".to_owned(),
        routing: "c1".to_owned(),
        source: br#"{"message_id":"not a number","body":"once"}"#.to_vec(),
    };
    let good = BulkDoc::from_document(&MessageDocument::from_record(&record(
        9,
        "c1",
        "alice",
        "once more",
    )));
    let report = deployment.sink.write(&[malformed, good]).await.unwrap();
    assert_eq!(report.indexed, 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].position, 0);
    assert_eq!(report.rejected[0].status, 400);
    assert_eq!(deployment.sink.metrics().rejected.get(), 1);
    deployment.refresh().await;
    let page = deployment
        .searcher
        .search(&query("once"), &conversations(&["c1"]))
        .await
        .unwrap();
    let mut found = ids(&page);
    found.sort();
    assert_eq!(found, vec![7, 9]);
    deployment.teardown().await;
}

#[tokio::test]
async fn paging_returns_every_hit_once_while_documents_are_indexed() {
    let deployment = Deployment::new(2).await;
    let convs = ["p1", "p2", "p3"];
    // Varying length and term frequency: distinct scores, and ties.
    let body = |id: u64| {
        format!(
            "{} {}",
            "needle ".repeat(1 + (id % 4) as usize),
            "hay ".repeat((id % 7) as usize)
        )
    };
    let initial: Vec<MessageRecord> = (1..=150)
        .map(|id| record(id, convs[(id % 3) as usize], "alice", &body(id)))
        .collect();
    deployment.index(&initial).await;
    deployment.refresh().await;
    let mine = conversations(&convs);

    for sort in [
        SearchSort::Relevance,
        SearchSort::Newest,
        SearchSort::Oldest,
    ] {
        let mut seen: Vec<u64> = Vec::new();
        let mut params = query("needle");
        params.sort = sort;
        params.limit = Some(7);
        let mut next_new_id = 10_000 + 1_000 * sort as u64;
        loop {
            let page = deployment.searcher.search(&params, &mine).await.unwrap();
            seen.extend(ids(&page));
            // Between pages, new matching documents arrive (better and
            // worse matches, older and newer ids) and become visible.
            let arriving: Vec<MessageRecord> = (0..5)
                .map(|offset| {
                    next_new_id += 1;
                    let id = if offset % 2 == 0 {
                        next_new_id
                    } else {
                        next_new_id - 9_000
                    };
                    record(id, convs[offset % 3], "bob", &body(id + offset as u64))
                })
                .collect();
            deployment.index(&arriving).await;
            deployment.refresh().await;
            match page.next_cursor {
                Some(cursor) => params.cursor = Some(cursor),
                None => break,
            }
        }
        let unique: HashSet<u64> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "{sort:?}: a hit came twice");
        for message in &initial {
            assert!(
                unique.contains(&message.message_id.as_u64()),
                "{sort:?}: {} was skipped",
                message.message_id
            );
        }
    }
    deployment.teardown().await;
}

#[tokio::test]
async fn hostile_queries_give_results_or_a_client_error() {
    let deployment = Deployment::new(1).await;
    deployment
        .index(&[record(
            1,
            "c1",
            "alice",
            "a perfectly normal message with (parens) and \"quotes\"",
        )])
        .await;
    deployment.refresh().await;
    let mine = conversations(&["c1"]);
    let long_word = "x".repeat(511);
    let hostile = [
        "\"unbalanced quote",
        "((((((((((((((((((((",
        "))))",
        "{\"query\":{\"match_all\":{}}}",
        "/.*.*.*.*/",
        "*",
        "?",
        "a~10 b~ \"c d\"~100",
        "\\",
        "-",
        "+ - | \" ( )",
        "\u{0000}\u{202e}\u{fffd}",
        "AND OR NOT",
        "normal -message",
        long_word.as_str(),
    ];
    for text in hostile {
        match deployment.searcher.search(&query(text), &mine).await {
            Ok(_) | Err(SearchError::Invalid(_)) => {}
            Err(error) => panic!("{text:?} gave {error:?}"),
        }
    }
    // Many terms, each a separate clause.
    let many_terms = (0..250)
        .map(|index| format!("w{index}"))
        .collect::<Vec<_>>()
        .join(" ");
    match deployment.searcher.search(&query(&many_terms), &mine).await {
        Ok(_) | Err(SearchError::Invalid(_)) => {}
        Err(error) => panic!("many terms gave {error:?}"),
    }
    assert!(matches!(
        deployment
            .searcher
            .search(&query(&"y".repeat(100_000)), &mine)
            .await,
        Err(SearchError::Invalid(_))
    ));
    // The JSON-looking query is text, not DSL: it matches nothing.
    assert!(
        deployment
            .searcher
            .search(&query("{\"query\":{\"match_all\":{}}}"), &mine)
            .await
            .unwrap()
            .hits
            .is_empty()
    );
    assert_eq!(
        ids(&deployment
            .searcher
            .search(&query("\"normal message\" zzz"), &mine)
            .await
            .unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        ids(&deployment
            .searcher
            .search(&query("\"normal message\" | perfectly"), &mine)
            .await
            .unwrap()),
        vec![1]
    );
    deployment.teardown().await;
}

#[tokio::test]
async fn an_unreachable_engine_is_retriable_everywhere() {
    let config = SearchEngineConfig {
        url: "http://127.0.0.1:1".to_owned(),
        request_timeout_ms: 2_000,
        ..SearchEngineConfig::default()
    };
    let client = EsClient::new(&config).unwrap();
    let error = template::apply_template(&client, &config)
        .await
        .unwrap_err();
    assert!(error.is_retriable());
    let settings = BulkSinkSettings {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        ..BulkSinkSettings::default()
    };
    let sink = EsBulkSink::new(
        client.clone(),
        "chat-messages",
        settings,
        BulkMetrics::default(),
    );
    let doc = BulkDoc::from_document(&MessageDocument::from_record(&record(
        1, "c1", "alice", "x",
    )));
    assert!(sink.write(&[doc]).await.unwrap_err().is_retriable());
    let searcher = MessageSearcher::new(
        client,
        &config.layout(),
        SearchLimits::default(),
        SearchMetrics::default(),
    );
    let error = searcher
        .search(&query("x"), &conversations(&["c1"]))
        .await
        .unwrap_err();
    assert!(matches!(error, SearchError::Unavailable(_)), "{error:?}");
}
