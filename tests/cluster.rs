//! Three pods of one deployment on loopback (127.0.0.1, 127.0.1.1 and 127.0.2.1, one
//! port), 6 partitions: sagas started and replied to through every pod complete and
//! compensate; lists through any pod are the same and page with no gap or repeat; a
//! definition registered on one pod is used on all; a pod killed under load makes its
//! partitions answer `503` naming it while the others' sagas see no error, and after
//! its restart everything it acknowledged is there and its sagas carry on.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::pods::{node_of, Pods, NODES, PARTITIONS};
use common::{get, post};
use hyper::StatusCode;
use sagalog_testkit::client::Client;
use serde_json::{json, Value};

fn definition() -> Value {
    let step = |name: &str| {
        json!({"name": name, "topic": format!("trio.{name}"), "compensable": true,
               "timeout_ms": 3_600_000, "max_attempts": 1, "backoff_ms": 1000})
    };
    json!({"name": "trio", "version": 1, "steps": [step("hold"), step("pay")]})
}

/// Every saga a list through `c` gives, in pages of 5; asserts no saga comes twice.
async fn list_all(c: &mut Client, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/sagas?limit=5&{query}&cursor={cursor}"),
            None => format!("/api/v1/sagas?limit=5&{query}"),
        };
        let page = get(c, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let page = page.json();
        for saga in page["items"].as_array().unwrap() {
            let id = saga["saga_id"].as_str().unwrap().to_string();
            assert!(!ids.contains(&id), "{id} listed twice");
            ids.push(id);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
    panic!("the list did not end");
}

/// Replies to `id`'s `step` through `c`.
async fn reply(
    c: &mut Client,
    id: &str,
    step: &str,
    outcome: &str,
) -> sagalog_testkit::client::Answer {
    let body = json!({"event_id": format!("{id}/{step}/{outcome}"), "step": step,
                      "outcome": outcome, "attempt": 1});
    post(c, &format!("/api/v1/sagas/{id}/events"), body).await
}

/// Waits (at most 15 s, three health checks) until `c`'s `sagalog_peer_up{node}` is
/// `want`.
async fn peer_up_becomes(c: &mut Client, node: &str, want: f64) {
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = get(c, "/metrics").await.text();
        let sample = format!("sagalog_peer_up{{node=\"{node}\"}}");
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&sample))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if value == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "sagalog_peer_up of node {node} is {value:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_share_six_partitions_behind_one_api() {
    let mut pods = Pods::start(&[]);
    let mut clients = Vec::new();
    for i in 0..NODES {
        clients.push(pods.client(i).await);
    }
    // A definition registered through one pod is known to all.
    common::put_definition(&mut clients[1], &definition()).await;

    // Starts through every pod: with ids of any partition, and without (an id of the
    // receiving pod's own partitions).
    let mut sagas = Vec::new();
    for n in 0..24u32 {
        let c = &mut clients[(n % NODES) as usize];
        let id = format!("t-{n}");
        let answer = post(
            c,
            "/api/v1/sagas",
            json!({"type": "trio", "saga_id": id, "payload": {"n": n}}),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{id}: {}",
            answer.text()
        );
        sagas.push(id);
    }
    for i in 0..NODES {
        for _ in 0..3 {
            let answer = post(
                &mut clients[i as usize],
                "/api/v1/sagas",
                json!({"type": "trio", "payload": {}}),
            )
            .await;
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
            let id = answer.json()["saga_id"].as_str().unwrap().to_string();
            assert_eq!(node_of(&id), i, "{id} is of the pod it was started on");
            sagas.push(id);
        }
    }
    assert!(
        (0..NODES).all(|i| sagas.iter().any(|id| node_of(id) == i)),
        "every pod holds sagas"
    );
    // A repeat through another pod is the same saga.
    let repeat = post(
        &mut clients[2],
        "/api/v1/sagas",
        json!({"type": "trio", "saga_id": "t-0", "payload": {"n": 0}}),
    )
    .await;
    assert_eq!(repeat.status, StatusCode::OK, "{}", repeat.text());

    // The outbox through pod 0 hands out every saga's first command once.
    let page = get(&mut clients[0], "/api/v1/outbox?limit=1000").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let page = page.json();
    let firsts: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["saga_id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = firsts.iter().collect();
    assert_eq!(unique.len(), firsts.len(), "no command twice");
    assert_eq!(unique.len(), sagas.len(), "every saga's command");
    let cursor = page["next_after"].as_str().unwrap().to_string();
    let empty = get(&mut clients[1], &format!("/api/v1/outbox?after={cursor}"))
        .await
        .json();
    assert_eq!(
        empty["items"],
        json!([]),
        "nothing after the cursor, through another pod"
    );

    // Every pod sees its peers up.
    for (i, c) in clients.iter_mut().enumerate() {
        for peer in (0..NODES).filter(|&p| p != i as u32) {
            peer_up_becomes(c, &peer.to_string(), 1.0).await;
        }
    }

    // Replies through the pod after the one that started it; a third of the sagas fail
    // their payment and are compensated.
    for (k, id) in sagas.iter().enumerate() {
        let c = &mut clients[(k + 1) % NODES as usize];
        assert_eq!(
            reply(c, id, "hold", "succeeded").await.status,
            StatusCode::ACCEPTED
        );
        if k % 3 == 0 {
            assert_eq!(
                reply(c, id, "pay", "failed").await.status,
                StatusCode::ACCEPTED
            );
            let c = &mut clients[(k + 2) % NODES as usize];
            assert_eq!(
                reply(c, id, "hold", "compensated").await.status,
                StatusCode::ACCEPTED
            );
        } else {
            assert_eq!(
                reply(c, id, "pay", "succeeded").await.status,
                StatusCode::ACCEPTED
            );
        }
    }
    for (k, id) in sagas.iter().enumerate() {
        let want = if k % 3 == 0 {
            "COMPENSATED"
        } else {
            "COMPLETED"
        };
        for c in clients.iter_mut() {
            let saga = get(c, &format!("/api/v1/sagas/{id}")).await.json();
            assert_eq!(saga["status"], want, "{saga}");
        }
    }

    // The same list through every pod.
    let all: BTreeSet<String> = sagas.iter().cloned().collect();
    for c in clients.iter_mut() {
        let listed: BTreeSet<String> = list_all(c, "").await.into_iter().collect();
        assert_eq!(listed, all);
        let compensated = list_all(c, "status=COMPENSATED").await.len();
        assert_eq!(compensated, sagas.len().div_ceil(3));
    }

    // Pod 2 killed under load: its partitions answer 503 naming it; the others' sagas
    // see no error.
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for via in [0u32, 1] {
        let (addr, errors, done, stop) =
            (pods.addr(via), errors.clone(), done.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("load-{via}-{n}");
                if node_of(&id) == 2 {
                    continue;
                }
                let started = post(
                    &mut c,
                    "/api/v1/sagas",
                    json!({"type": "trio", "saga_id": id, "payload": {}}),
                )
                .await;
                let replied = reply(&mut c, &id, "hold", "succeeded").await;
                if started.status != StatusCode::CREATED || replied.status != StatusCode::ACCEPTED {
                    errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "{id}: {} {} / {} {}",
                        started.status,
                        started.text(),
                        replied.status,
                        replied.text()
                    );
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Pod 2's own sagas, acknowledged right up to the kill.
    let mut acked_on_2 = Vec::new();
    for n in 0..200 {
        let id = format!("two-{n}");
        if node_of(&id) != 2 {
            continue;
        }
        let answer = post(
            &mut clients[2],
            "/api/v1/sagas",
            json!({"type": "trio", "saga_id": id, "payload": {}}),
        )
        .await;
        assert_eq!(answer.status, StatusCode::CREATED);
        acked_on_2.push(id);
        if acked_on_2.len() == 10 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(pods.servers[2].take()); // SIGKILL
    tokio::time::sleep(Duration::from_millis(700)).await;
    let down = &acked_on_2[0];
    for c in clients.iter_mut().take(2) {
        let answer = get(c, &format!("/api/v1/sagas/{down}")).await;
        let message = common::expect_error(&answer, 503, "partition_unavailable");
        let p = sagalog_engine::partition_of(down, PARTITIONS);
        assert!(
            message.contains(&format!("partition {p} of 6")),
            "{message}"
        );
        assert!(message.contains("node 2"), "{message}");
        assert!(answer.headers.contains_key("retry-after"));
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    // The pods see it gone: sagalog_peer_up{node="2"} is 0 on each (the alert
    // SagalogPartitionsUnreachable fires on it), within two health checks.
    for c in clients.iter_mut().take(2) {
        peer_up_becomes(c, "2", 0.0).await;
    }
    assert!(done.load(Ordering::Relaxed) > 10, "the load ran");
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "the other pods' sagas saw no error"
    );

    // Back again: what pod 2 acknowledged is there, and its sagas carry on.
    pods.servers[2] = Some(pods.start_pod(2));
    clients[2] = pods.client(2).await;
    for id in &acked_on_2 {
        let saga = get(&mut clients[0], &format!("/api/v1/sagas/{id}")).await;
        assert_eq!(saga.status, StatusCode::OK, "{id}: {}", saga.text());
        assert_eq!(
            reply(&mut clients[1], id, "hold", "succeeded").await.status,
            StatusCode::ACCEPTED
        );
        assert_eq!(
            reply(&mut clients[0], id, "pay", "succeeded").await.status,
            StatusCode::ACCEPTED
        );
        let saga = get(&mut clients[2], &format!("/api/v1/sagas/{id}"))
            .await
            .json();
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
    }
    let listed = list_all(&mut clients[1], "type=trio").await;
    assert!(acked_on_2.iter().all(|id| listed.contains(id)));

    // The forwarding path opens nothing: a wrong cluster secret is refused.
    let wrong = clients[0]
        .send(
            hyper::Method::GET,
            "/api/v1/sagas",
            &[("x-sagalog-peer", "not-the-secret")],
            None,
        )
        .await
        .unwrap();
    common::expect_error(&wrong, 401, "unauthorized");
}
