//! A client's request on a server with other pods (see [`crate::cluster`]): one for a
//! saga of another pod's partition is forwarded there; a list is asked of every pod and
//! merged; a definition and a delivery pause or resume are sent to every pod.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::app::App;
use crate::cluster::{unavailable, Asked, Cluster, PeerAnswer};
use crate::cursor;
use crate::error::ApiError;
use crate::outbox::{self, OutboxQuery};
use crate::query::{list_query, saga_id, DEFAULT_LIMIT};
use crate::respond::{respond, response_json, Body};
use crate::routes::{Matched, Merge, Scope};

/// Which pod's outbox page the next call takes first.
static FIRST_PAGE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A peer's outbox page: its commands, and its cursor after them and before.
struct PeerPage {
    items: Vec<Value>,
    next: Vec<Option<u64>>,
    from: Vec<Option<u64>>,
}

/// The `saga_id` a start's body names, if it names one (a body that does not parse is
/// answered here, with the error it gets anywhere).
fn start_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Start {
        saga_id: Option<String>,
    }
    serde_json::from_slice::<Start>(body).ok()?.saga_id
}

impl App {
    /// The answer when the request is for another pod or for every pod, as the route's
    /// scope says; `None` when this pod answers it alone, as a server with no peers
    /// does.
    pub(crate) async fn across_pods(
        &self,
        cluster: &Arc<Cluster>,
        asked: &Asked,
        matched: &Matched<'_>,
        param: &str,
        body: &Bytes,
    ) -> Option<Result<Response<Body>, ApiError>> {
        match matched.scope {
            Scope::Pod => None,
            Scope::Saga => {
                let id = saga_id(param).ok()?;
                let p = self.partitions.owner(id).err()?;
                Some(self.forward(cluster, p, asked, body).await)
            }
            Scope::Start => {
                let id = start_id(body)?;
                let p = self.partitions.owner(saga_id(&id).ok()?).err()?;
                Some(self.forward(cluster, p, asked, body).await)
            }
            Scope::Partition => {
                let p = form_urlencoded::parse(asked.query.as_bytes())
                    .find(|(k, _)| k == "partition")
                    .and_then(|(_, v)| v.parse::<u32>().ok())
                    .filter(|&p| p < self.partitions.count())?;
                self.partitions.get(p).is_none().then_some(())?;
                Some(self.forward(cluster, p, asked, body).await)
            }
            Scope::Merged(Merge::Sagas) => Some(self.list_everywhere(cluster, asked).await),
            Scope::Merged(Merge::Outbox) => Some(self.outbox_everywhere(cluster, asked).await),
            Scope::Merged(Merge::DeadLetters) => {
                Some(self.dead_letters_everywhere(cluster, asked).await)
            }
            // Answered here first (see [`App::everywhere`]).
            Scope::Everywhere => None,
        }
    }

    /// The request, sent to the pod of partition `p`; its answer as it came.
    async fn forward(
        &self,
        cluster: &Cluster,
        p: u32,
        asked: &Asked,
        body: &Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let what = format!("partition {p} of {}", self.partitions.count());
        let answer = cluster
            .send(
                cluster.node_of(p),
                asked.method.clone(),
                &asked.path_and_query,
                &asked.headers,
                body.clone(),
                Duration::ZERO,
            )
            .await
            .map_err(|e| unavailable(e, &what))?;
        Ok(answer.into_response())
    }

    /// The same request of every peer at once, each answer by node. With `wait` (an
    /// outbox long poll, which may take that much longer), the first answer with
    /// commands ends it and the other requests are dropped.
    async fn ask_peers(
        &self,
        cluster: &Arc<Cluster>,
        asked: &Asked,
        body: &Bytes,
        wait: Duration,
    ) -> Vec<(u32, Result<PeerAnswer, ApiError>)> {
        let mut asks = tokio::task::JoinSet::new();
        for node in cluster.peers() {
            let (cluster, method, path) = (
                cluster.clone(),
                asked.method.clone(),
                asked.path_and_query.clone(),
            );
            let (headers, body) = (asked.headers.clone(), body.clone());
            asks.spawn(async move {
                let what = format!("what node {node} holds");
                let answer = cluster
                    .send(node, method, &path, &headers, body, wait)
                    .await
                    .map_err(|e| unavailable(e, &what));
                (node, answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = asks.join_next().await {
            let Ok((node, answer)) = joined else { continue };
            let found = !wait.is_zero()
                && matches!(&answer, Ok(a) if a.json().is_some_and(|page| {
                    page["items"].as_array().is_some_and(|items| !items.is_empty())
                }));
            answers.push((node, answer));
            if found {
                break;
            }
        }
        answers.sort_by_key(|(node, _)| *node);
        answers
    }

    /// `GET /api/v1/sagas` of every pod, merged as the partitions of one pod are.
    async fn list_everywhere(
        &self,
        cluster: &Arc<Cluster>,
        asked: &Asked,
    ) -> Result<Response<Body>, ApiError> {
        let list = list_query(&asked.query, DEFAULT_LIMIT)?;
        let empty = Bytes::new();
        let (local, peers) = tokio::join!(
            self.partitions.list(&list),
            self.ask_peers(cluster, asked, &empty, Duration::ZERO)
        );
        let local = local?;
        let mut pages: Vec<(Vec<Value>, Option<String>)> = vec![(
            local
                .items
                .iter()
                .map(|v| json!(crate::json::saga(v)))
                .collect(),
            local.next_cursor,
        )];
        for (_, answer) in peers {
            let answer = answer?;
            if answer.status != StatusCode::OK {
                return Ok(answer.into_response());
            }
            let page = answer.json().unwrap_or_default();
            let items = page["items"].as_array().cloned().unwrap_or_default();
            let cursor = page["next_cursor"].as_str().map(str::to_string);
            pages.push((items, cursor));
        }
        let position = |item: &Value| {
            let at = item["updated_at"]
                .as_str()
                .and_then(|t| crate::json::parse_rfc3339("updated_at", t).ok())
                .unwrap_or(0);
            (at, item["saga_id"].as_str().unwrap_or_default().to_string())
        };
        let (items, next_cursor) = sagalog_engine::partitions::merge_by(
            pages,
            list.limit,
            self.partitions.max_list_bytes(),
            position,
            |item| item.to_string().len(),
        )?;
        Ok(respond(
            StatusCode::OK,
            json!({"items": items, "next_cursor": next_cursor}),
        ))
    }

    /// `GET /api/v1/outbox` of every pod: first what each has now (a page keeps whole
    /// pods' answers up to `limit`; the others' partitions stay where they were), then,
    /// with nothing and `wait_ms`, a wait on every pod, answered by the first that has
    /// commands. A pod that does not answer is left out (its partitions' positions do
    /// not move), so the other pods' commands still flow while one is down.
    async fn outbox_everywhere(
        &self,
        cluster: &Arc<Cluster>,
        asked: &Asked,
    ) -> Result<Response<Body>, ApiError> {
        let query = OutboxQuery::parse(&asked.query, self.config.max_outbox_wait_ms)?;
        let from = outbox::resolve(&self.partitions, &query.after)?;
        // Pass 1: now, everywhere.
        let now = OutboxQuery {
            wait_ms: 0,
            ..query.clone()
        };
        let (local, peers) = tokio::join!(
            outbox::poll_several(&self.partitions, from.clone(), &now, self.stopping.clone()),
            self.outbox_of_peers(cluster, asked, None, 0)
        );
        let (local_items, local_next) = local?;
        if query.after == outbox::After::Latest
            && peers.len() + 1 < cluster.placement().nodes() as usize
        {
            // Where a pod that did not answer ends is unknown: a cursor would have to
            // start its partitions from their beginning.
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "partition_unavailable",
                "after=latest needs every pod's log end, and a pod does not answer; retry",
            ));
        }
        let mut positions = from.clone();
        let mut items: Vec<Value> = Vec::new();
        let local_found = local_items
            .iter()
            .map(|c| serde_json::to_value(c).expect("a command serializes"))
            .collect();
        let mut pages = vec![(
            cluster.placement().node(),
            PeerPage {
                items: local_found,
                next: local_next,
                from: from.clone(),
            },
        )];
        pages.extend(peers);
        // Whose page goes first turns from call to call, so that a pod with a backlog
        // of its own does not keep the others' commands out of every page. A page is
        // taken whole or not at all; a pod's partitions not taken stay where they were.
        let first = FIRST_PAGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % pages.len();
        pages.rotate_left(first);
        for (node, page) in pages {
            let kept = items.len() + page.items.len() <= query.limit;
            for p in cluster.placement().held_by(node).map(|p| p as usize) {
                positions[p] = if kept { page.next[p] } else { page.from[p] };
            }
            if kept {
                items.extend(page.items);
            }
        }
        if items.is_empty() && query.wait_ms > 0 {
            // Pass 2: wait everywhere from there; the first pod with commands answers.
            let cursor = cursor::encode_outbox(&positions);
            let waiting = OutboxQuery {
                after: outbox::After::Cursor(positions.clone()),
                ..query.clone()
            };
            let start = positions.clone();
            let local = async {
                let found =
                    outbox::poll_several(&self.partitions, start, &waiting, self.stopping.clone())
                        .await;
                found.map(|(found, next)| {
                    let found: Vec<Value> = found
                        .iter()
                        .map(|c| serde_json::to_value(c).expect("a command serializes"))
                        .collect();
                    (cluster.placement().node(), found, next)
                })
            };
            let remote = async {
                let pages = self
                    .outbox_of_peers(cluster, asked, Some(&cursor), query.wait_ms)
                    .await;
                match pages.into_iter().find(|(_, page)| !page.items.is_empty()) {
                    Some(found) => found,
                    // No peer has any (or none answers): the wait is the local one's.
                    None => std::future::pending().await,
                }
            };
            let winner = tokio::select! {
                found = local => Some(found?),
                (node, page) = remote => Some((node, page.items, page.next)),
            };
            if let Some((node, found, next)) = winner {
                for p in cluster.placement().held_by(node).map(|p| p as usize) {
                    positions[p] = next[p];
                }
                items = found;
            }
        }
        Ok(respond(
            StatusCode::OK,
            json!({"items": items, "next_after": cursor::encode_outbox(&positions)}),
        ))
    }

    /// Every peer's outbox page for the client's query (after `cursor` when given),
    /// waiting at most `wait_ms`; the peers that answered, by node.
    async fn outbox_of_peers(
        &self,
        cluster: &Arc<Cluster>,
        asked: &Asked,
        cursor: Option<&str>,
        wait_ms: u64,
    ) -> Vec<(u32, PeerPage)> {
        let count = self.partitions.count() as usize;
        let path_and_query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (key, value) in form_urlencoded::parse(asked.query.as_bytes()) {
                match key.as_ref() {
                    "wait_ms" => {}
                    "after" if cursor.is_some() => {}
                    _ => {
                        query.append_pair(&key, &value);
                    }
                }
            }
            query.append_pair("wait_ms", &wait_ms.to_string());
            if let Some(cursor) = cursor {
                query.append_pair("after", cursor);
            }
            format!("/api/v1/outbox?{}", query.finish())
        };
        let again = Asked {
            method: Method::GET,
            path_and_query,
            headers: asked.headers.clone(),
            query: String::new(),
        };
        let answers = self
            .ask_peers(
                cluster,
                &again,
                &Bytes::new(),
                Duration::from_millis(wait_ms),
            )
            .await;
        let mut pages = Vec::new();
        for (node, answer) in answers {
            let page = match answer {
                Ok(answer) if answer.status == StatusCode::OK => answer.json(),
                Ok(answer) => {
                    tracing::warn!(node, status = %answer.status, body = %String::from_utf8_lossy(&answer.body), "a pod refused an outbox read");
                    None
                }
                Err(e) => {
                    tracing::warn!(node, error = %e.message, "a pod's outbox is left out");
                    None
                }
            };
            let Some(page) = page else { continue };
            let cursor = |field: &str| {
                page[field]
                    .as_str()
                    .and_then(cursor::parse_outbox)
                    .filter(|c| c.len() == count)
            };
            let (Some(next), Some(from)) = (cursor("next_after"), cursor("from_after")) else {
                continue;
            };
            let items = page["items"].as_array().cloned().unwrap_or_default();
            pages.push((node, PeerPage { items, next, from }));
        }
        pages
    }

    /// Dead letters of every pod, by partition then offset.
    async fn dead_letters_everywhere(
        &self,
        cluster: &Arc<Cluster>,
        asked: &Asked,
    ) -> Result<Response<Body>, ApiError> {
        let local = self.dead_letters(&asked.query)?;
        let mut pages = vec![response_json(local).await];
        for (_, answer) in self
            .ask_peers(cluster, asked, &Bytes::new(), Duration::ZERO)
            .await
        {
            let answer = answer?;
            if answer.status != StatusCode::OK {
                return Ok(answer.into_response());
            }
            pages.push(answer.json().unwrap_or_default());
        }
        let limit = form_urlencoded::parse(asked.query.as_bytes())
            .find(|(k, _)| k == "limit")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(DEFAULT_LIMIT);
        let key = |item: &Value| (item["partition"].as_u64(), item["offset"].as_u64());
        let mut items: Vec<Value> = pages
            .iter()
            .flat_map(|page| page["items"].as_array().cloned().unwrap_or_default())
            .collect();
        items.sort_by_key(key);
        items.truncate(limit);
        let next_after = match items.last() {
            Some(last) => match (last["partition"].as_u64(), last["offset"].as_u64()) {
                (Some(p), Some(offset)) => json!(cursor::encode_dead_letter(p as u32, offset)),
                _ => Value::Null,
            },
            None => pages
                .first()
                .map(|page| page["next_after"].clone())
                .unwrap_or(Value::Null),
        };
        Ok(respond(
            StatusCode::OK,
            json!({"items": items, "next_after": next_after}),
        ))
    }

    /// A definition, a pause or a resume, once this pod took it (`local`, its answer
    /// the answer): the same on every peer. A peer that did not take it makes the
    /// answer `503 partially_applied`, naming it: the request is idempotent, repeat it.
    pub(crate) async fn everywhere(
        &self,
        cluster: &Arc<Cluster>,
        asked: &Asked,
        body: &Bytes,
        local: Response<Body>,
    ) -> Result<Response<Body>, ApiError> {
        let mut failed = Vec::new();
        let mut nodes =
            vec![json!({"node": cluster.placement().node(), "status": local.status().as_u16()})];
        for (node, answer) in self.ask_peers(cluster, asked, body, Duration::ZERO).await {
            match answer {
                Ok(answer) if answer.status.is_success() => {
                    nodes.push(json!({"node": node, "status": answer.status.as_u16()}));
                }
                Ok(answer) => failed.push(format!(
                    "node {node} answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                )),
                Err(e) => failed.push(e.message),
            }
        }
        if !failed.is_empty() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "partially_applied",
                format!(
                    "done on nodes {}; not on every node: {} — repeat the request (it changes nothing where it was done)",
                    nodes
                        .iter()
                        .map(|n| n["node"].to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    failed.join("; ")
                ),
            ));
        }
        let status = local.status();
        let mut out = response_json(local).await;
        out["nodes"] = Value::Array(nodes);
        Ok(respond(status, out))
    }
}
