#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
//! The REST surface as a client sees it: paging, statuses, watch streams.

use std::time::Duration;

use ambit_fake_apiserver::FakeApiServer;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};

async fn get(server: &FakeApiServer, uri: &str) -> (u16, Vec<Value>) {
    let request = http::Request::get(uri).body(Bytes::new()).unwrap();
    let response = server.handle(request).await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let values = body
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect();
    (status, values)
}

fn pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
           "spec": {"nodeName": node}})
}

#[tokio::test]
async fn lists_page_with_continue_and_filter_by_node() {
    let server = FakeApiServer::default();
    for i in 0..5 {
        server
            .create(pod(
                &format!("p{i}"),
                if i % 2 == 0 { "node-1" } else { "node-2" },
            ))
            .unwrap();
    }
    let mut names = Vec::new();
    let mut uri = "/api/v1/pods?limit=2".to_string();
    loop {
        let (status, page) = get(&server, &uri).await;
        assert_eq!(status, 200);
        let items = page[0]["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        names.extend(
            items
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match page[0]["metadata"]["continue"].as_str() {
            Some(token) => uri = format!("/api/v1/pods?limit=2&continue={token}"),
            None => break,
        }
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    let (_, list) = get(&server, "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-2").await;
    assert_eq!(list[0]["items"].as_array().unwrap().len(), 2);
    let (_, list) = get(
        &server,
        "/api/v1/namespaces/default/pods?labelSelector=app%20in%20(p0,p4)",
    )
    .await;
    assert_eq!(list[0]["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn errors_are_status_objects() {
    let server = FakeApiServer::default();
    let (status, body) = get(&server, "/api/v1/namespaces/default/pods/none").await;
    assert_eq!(
        (status, body[0]["reason"].as_str()),
        (404, Some("NotFound"))
    );
    assert_eq!(server.create(pod("a", "n")).map(|_| ()), Ok(()));
    assert_eq!(server.create(pod("a", "n")).unwrap_err().code, 409);
    server.forbid("pods");
    let (status, body) = get(&server, "/api/v1/pods").await;
    assert_eq!((status, body[0]["kind"].as_str()), (403, Some("Status")));
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_in_the_stream() {
    let server = FakeApiServer::default();
    let created = server.create(pod("a", "n")).unwrap();
    let version = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    server.create(pod("b", "n")).unwrap();
    // From a version still in history: the later change, then the timeout ends the stream.
    let (status, events) = get(
        &server,
        &format!("/api/v1/pods?watch=true&resourceVersion={version}&timeoutSeconds=1"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0]["type"].as_str(),
            events[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    server.expire_watches();
    let uri = format!("/api/v1/pods?watch=1&resourceVersion={version}");
    let watch = get(&server, &uri);
    let (status, events) = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
}

#[tokio::test]
async fn an_idle_watch_gets_bookmarks() {
    let server = FakeApiServer::default();
    let (_, events) = get(
        &server,
        "/api/v1/pods?watch=true&resourceVersion=1&allowWatchBookmarks=true&timeoutSeconds=2",
    )
    .await;
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["type"] == "BOOKMARK"), "{events:?}");
    assert_eq!(events[0]["object"]["metadata"]["resourceVersion"], "1");
}
