//! The order API against abuse and retries: idempotency keys and the limits of
//! the HTTP server. The order service runs in-process on a port of its own, over
//! a broker of the test's own; `tests/fuzz.rs` fuzzes it.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rust_eda::events::topics;
use rust_eda::kafka::read_topic;
use serde_json::{Value, json};
use support::api::Api;
use support::{PrivateBroker, connect, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn order(quantity: u64) -> Value {
    json!({"customer_id": "c-1", "items": [{"product_id": "p-1", "quantity": quantity, "price": 2.5}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_creates_one_order_on_any_instance() {
    let broker = PrivateBroker::start();
    let a = Api::start(&broker, &[]).await;
    let b = Api::start(&broker, &[]).await;

    let first = a.post_order(&order(1), Some("retry-me")).await;
    assert_eq!(first.status, 201, "{:?}", first.json());
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.json()["order_id"].as_str().unwrap().to_owned();

    // The client retries on the same instance, and on the other one (which learns
    // of the order from the topic); both answer with the first order.
    let again = a.post_order(&order(1), Some("retry-me")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["order_id"], id.as_str());
    let elsewhere = within(30, "the other instance seeing the order", async {
        loop {
            let r = b.post_order(&order(1), Some("retry-me")).await;
            if r.header("idempotent-replayed") == Some("true") {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(elsewhere.json()["order_id"], id.as_str());

    // The same key for another order is refused; a malformed key too.
    let misuse = a.post_order(&order(2), Some("retry-me")).await;
    assert_eq!(misuse.status, 422);
    assert_eq!(misuse.json()["details"][0]["field"], "Idempotency-Key");
    let malformed = a.post_order(&order(1), Some("has space")).await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["details"][0]["field"], "Idempotency-Key");

    // Both instances at once with a fresh key: whatever reached the topic names
    // one order, so it is decided once downstream.
    let three = order(3);
    let (x, y) = tokio::join!(
        a.post_order(&three, Some("race")),
        b.post_order(&three, Some("race"))
    );
    assert_eq!((x.status, y.status), (201, 201));
    assert_eq!(x.json()["order_id"], y.json()["order_id"]);

    // Without a key, every POST is a new order.
    let one = a.post_order(&order(1), None).await;
    let two = a.post_order(&order(1), None).await;
    assert_ne!(one.json()["order_id"], two.json()["order_id"]);

    let cluster = connect(&broker.brokers()).await;
    let ids: Vec<String> = read_topic(&cluster, topics::ORDER_CREATED)
        .await
        .unwrap()
        .iter()
        .map(|m| serde_json::from_slice::<Value>(m.value.as_deref().unwrap()).unwrap()["payload"]["order_id"]
            .as_str()
            .unwrap()
            .to_owned())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "retry-me, race and two without a key: {ids:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_excess_requests_are_refused_not_queued() {
    let broker = PrivateBroker::start();
    let api = Api::start(
        &broker,
        &[
            ("APP_SERVER_MAX_IN_FLIGHT", "1"),
            ("APP_SERVER_HEADER_TIMEOUT_MS", "500"),
            ("APP_ORDER_PUBLISH_TIMEOUT_MS", "1000"),
            ("APP_SERVER_REQUEST_TIMEOUT_MS", "1500"),
        ],
    )
    .await;
    let addr = format!("127.0.0.1:{}", api.port);

    // A client that never finishes its headers is disconnected.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    within(
        5,
        "the server closing a connection without headers",
        idle.read_to_end(&mut buf),
    )
    .await
    .unwrap();

    // A customer's body that trickles holds the only slot...
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let bearer = support::auth::bearer("c-1");
    let head = trickling_post(&mut slow, Some(&bearer), 100).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    // ...so another request is answered 503 at once, with Retry-After
    // (probes have slots of their own).
    let refused = api
        .get("/api/v1/orders/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("too many requests")
    );
    // The slow request itself ends with 503 at the request timeout.
    let mut answer = Vec::new();
    within(
        5,
        "the slow request timing out",
        slow.read_to_end(&mut answer),
    )
    .await
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("not completed within"), "{answer}");
    // And the slot is free again.
    assert_eq!(
        api.get("/api/v1/orders/00000000-0000-0000-0000-000000000000")
            .await
            .status,
        404
    );
    api.stop().await;
}

/// A connection from `source` (a loopback address of its own) to the API.
async fn connect_from(source: &str, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap()
}

/// Sends the headers of an order POST with a `length`-byte body, asking
/// `Expect: 100-continue`, and returns the head of the server's first answer.
/// The server says `100 Continue` once the request holds a slot and its body
/// is being read, so a test knows the request is in flight; then one byte of
/// the body follows, and the rest never comes. A request refused from its
/// headers is answered at once, with no `100 Continue`.
async fn trickling_post(
    conn: &mut TcpStream,
    authorization: Option<&str>,
    length: usize,
) -> String {
    let authorization = authorization.map_or(String::new(), |a| format!("authorization: {a}\r\n"));
    let head = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n{authorization}expect: 100-continue\r\ncontent-length: {length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0; 1];
    within(10, "the server's first answer to a POST", async {
        while !answer.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte).await {
                Ok(1) => answer.push(byte[0]),
                _ => break,
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if answer.starts_with("HTTP/1.1 100") {
        conn.write_all(b"{").await.unwrap();
    }
    answer
}

/// One address can neither hold the API's slots nor starve the probes: a
/// request that will be refused is answered from its headers, before its body;
/// an address holds a bounded number of connections; `/health` and `/ready`
/// answer while every API slot is taken, and the public `/ready` shows nothing
/// internal.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_hold_the_slots_or_starve_the_probes() {
    let api = Api::start_on(
        &support::brokers(),
        &[
            ("APP_SERVER_MAX_IN_FLIGHT", "4"),
            ("APP_SERVER_MAX_CONNECTIONS_PER_CLIENT", "3"),
            ("APP_SERVER_REQUEST_TIMEOUT_MS", "30000"),
            ("APP_ORDER_PUBLISH_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    let bearer = support::auth::bearer("c-1");

    // Without a token: 401 at once, not after a body that never comes.
    let mut anonymous = connect_from("127.0.0.4", api.port).await;
    let answer = trickling_post(&mut anonymous, None, 60_000).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // An address holds three connections, each a request in flight; its
    // fourth is closed unanswered.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = connect_from("127.0.0.2", api.port).await;
        let head = trickling_post(&mut conn, Some(&bearer), 60_000).await;
        assert!(head.starts_with("HTTP/1.1 100"), "{head}");
        held.push(conn);
    }
    let mut fourth = connect_from("127.0.0.2", api.port).await;
    let closed = trickling_post(&mut fourth, Some(&bearer), 60_000).await;
    assert_eq!(closed, "", "the fourth connection was answered");

    // Another address takes the last slot; the API is now full...
    let mut last = connect_from("127.0.0.3", api.port).await;
    let head = trickling_post(&mut last, Some(&bearer), 60_000).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    let full = api
        .get("/api/v1/orders/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(full.status, 503, "{:?}", full.json());
    // ...and the probes still answer, the public /ready with its verdict alone.
    assert_eq!(api.get("/health").await.status, 200);
    let ready = api.get("/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json(), json!({"status": "ready"}));
    // The details are on the operations port.
    let ops = support::get_local(api.metrics_port, "/ready", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ops.status, 200);
    assert_eq!(ops.json()["broker"], "ok");
    assert!(ops.json()["orders"].is_u64(), "{:?}", ops.json());

    drop(held);
    drop(last);
    api.stop().await;
}

/// A publish that times out may still have reached the broker: the order is
/// then in the log, and the API must not say it was not accepted. It answers
/// 503 "outcome unknown" with the order id, and a retry with the same key
/// answers with that order.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_that_timed_out_is_answered_as_an_unknown_outcome() {
    let broker = PrivateBroker::start();
    let api = Api::start(&broker, &[("APP_ORDER_PUBLISH_TIMEOUT_MS", "1500")]).await;
    broker.pause();
    let answer = api.post_order(&order(1), Some("paused-broker")).await;
    broker.resume();
    assert_eq!(answer.status, 503, "{:?}", answer.json());
    assert!(answer.header("retry-after").is_some());
    let message = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.starts_with("outcome unknown"), "{message}");

    let retried = within(60, "the retry being accepted", async {
        loop {
            let r = api.post_order(&order(1), Some("paused-broker")).await;
            if r.status == 201 {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let id = retried.json()["order_id"].as_str().unwrap().to_owned();
    assert!(message.contains(&id), "the 503 names order {id}: {message}");
    api.stop().await;
}

/// Every label value of the HTTP metrics comes from a bounded set: a method a
/// client makes up is counted as `other`, so sending ever new ones cannot grow
/// `/metrics` (each made a series of its own before).
#[tokio::test(flavor = "multi_thread")]
async fn made_up_methods_do_not_grow_the_metrics() {
    let api = Api::start_on(&support::brokers(), &[]).await;
    let token = format!("MADEUP{}", "X".repeat(240));
    for i in 0..20 {
        let mut conn = TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
        let request =
            format!("{token}{i} /api/v1/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        within(
            10,
            "an answer to a made-up method",
            conn.read_to_end(&mut answer),
        )
        .await
        .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    }
    let page = support::metrics_page(api.metrics_port).await;
    assert!(!page.contains("MADEUP"), "a client's method became a label");
    assert!(
        page.lines()
            .any(|l| l.starts_with("eda_http_requests_total{") && l.contains("method=\"other\"")),
        "made-up methods are counted as other"
    );
    api.stop().await;
}
