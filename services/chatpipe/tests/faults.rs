//! Faults applied for real, in CI's budget: a fan-out worker running as
//! its own `chatpipe fanout` process is killed with SIGKILL in the middle of
//! a stream of sends, and a second process takes its partitions over.
//! Nothing acknowledged may be lost: every message reaches the recipient
//! live (first occurrences in send order) and history holds each exactly
//! once. The long runs (every role, under thousands of clients) are
//! `benches/faults.sh`.

mod common;

use std::process::Stdio;

use common::*;
use tokio::process::{Child, Command};

/// Messages sent; the worker dies after a third of them and its
/// successor starts after half.
const MESSAGES: usize = 200;

/// `chatpipe fanout` in `group`, on this stack's topics and secret, as a
/// child process; returns once its ops listener answers `/readyz`.
async fn fanout_process(stack: &Stack, group: &str) -> Child {
    let ops = std::net::TcpListener::bind(ANY_PORT)
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let child = Command::new(env!("CARGO_BIN_EXE_chatpipe"))
        .arg("fanout")
        .args(["--group", group])
        .args(["--ops-listen", &ops.to_string()])
        .args(["--topic-prefix", &stack.prefix])
        .args(["--kafka-brokers", &stack.kafka.brokers])
        .env("CHATPIPE_TOKEN_SECRET", &stack.secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chatpipe fanout starts");
    eventually("the fan-out process ready", WAIT, || async move {
        // Not listening yet is not ready yet.
        tokio::net::TcpStream::connect(ops).await.ok()?;
        let (status, _) = http_get(ops, "/readyz").await;
        (status == 200).then_some(())
    })
    .await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_process_killed_with_sigkill_loses_nothing() {
    let stack = Stack::new().await;
    let (edge, _edge_shutdown) = stack.edge(stack.edge_config("a")).await;
    let full = stack.full().await;
    let group = unique("fanout");
    let mut first = fanout_process(&stack, &group).await;

    let (alice, bob) = (unique("alice"), unique("bob"));
    let conversation = stack.conversation(&[&alice, &bob]).await;
    let mut sender = Client::connect(&edge, &stack.token(&alice)).await;
    let mut receiver = Client::connect(&edge, &stack.token(&bob)).await;
    // The first message is delivered once the worker knows bob's route.
    let mut acked = Vec::new();
    let first_ack = sender
        .send_message(conversation.as_str(), "warm-up", "w0")
        .await;
    acked.push(first_ack["message_id"].as_str().unwrap().to_owned());
    let warm_up = receiver
        .wait_for("the warm-up message", |frame| frame["op"] == "message")
        .await;
    // Kept for the final count, so that a redelivered warm-up after the
    // rebalance is recognised as the duplicate it is.
    receiver.pending.insert(0, warm_up);

    let mut second = None;
    for index in 1..MESSAGES {
        if index == MESSAGES / 3 {
            first.start_kill().expect("SIGKILL sent");
            let status = tokio::time::timeout(WAIT, first.wait())
                .await
                .expect("the killed process exits")
                .expect("its status");
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
        }
        if index == MESSAGES / 2 {
            second = Some(fanout_process(&stack, &group).await);
        }
        let ack = sender
            .send_message(
                conversation.as_str(),
                &format!("k{index}"),
                &format!("n{index}"),
            )
            .await;
        acked.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    let received = message_ids(&receiver.messages(conversation.as_str(), MESSAGES).await);
    assert_eq!(
        received, acked,
        "every message live, first occurrences in order"
    );

    let history = eventually("history holds every message", WAIT, || {
        let full = &full;
        let token = stack.token(&alice);
        let conversation = conversation.clone();
        async move {
            let messages = full.latest_history(&token, conversation.as_str()).await;
            (messages.len() >= MESSAGES).then_some(messages)
        }
    })
    .await;
    assert_eq!(
        message_ids(&history),
        acked,
        "history: each message once, in order"
    );
    drop(second);
}
