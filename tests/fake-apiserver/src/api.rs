//! Requests in, responses out: the REST surface of the API server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::resources::{parse_path, Target};
use crate::selector::Selector;
use crate::store::{Change, EventType, Refusal};
use crate::{types, Body, FakeApiServer, BOOKMARK_INTERVAL};

/// Where TokenReviews are created.
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

impl FakeApiServer {
    /// Answers one request.
    pub async fn handle(&self, request: Request<Bytes>) -> Response<Body> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{} {}", request.method(), request.uri()));
        let delay = *self.faults.delay.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match self.route(request).await {
            Ok(response) => response,
            Err(refusal) => status_response(&refusal),
        }
    }

    async fn route(&self, request: Request<Bytes>) -> Result<Response<Body>, Refusal> {
        if let Some(token) = &self.token {
            let presented = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if presented != Some(format!("Bearer {token}").as_str()) {
                return Err(Refusal::new(401, "Unauthorized", "Unauthorized"));
            }
        }
        let path = request.uri().path();
        if path == "/version" {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-ambit-fake"}),
            ));
        }
        if path == TOKEN_REVIEWS && request.method() == Method::POST {
            let review: Value = serde_json::from_slice(request.body()).map_err(|e| {
                Refusal::new(400, "BadRequest", format!("TokenReview is not JSON: {e}"))
            })?;
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            let audiences: Vec<String> = review["spec"]["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let mut answer = review.clone();
            answer["status"] = self.review(token, &audiences);
            return Ok(json_response(StatusCode::CREATED, &answer));
        }
        let not_found = || {
            Refusal::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            )
        };
        if path == "/apis" {
            return Ok(json_response(StatusCode::OK, &self.api_groups()));
        }
        let target = parse_path(path).ok_or_else(not_found)?;
        if !self.serves(target.resource, &target.version) {
            return Err(not_found());
        }
        if types(&self.faults.forbidden).contains(target.resource.plural) {
            return Err(Refusal::new(
                403,
                "Forbidden",
                format!("{} is forbidden: User \"system:serviceaccount:ambit:node-agent\" cannot list resource \"{}\"", target.resource.plural, target.resource.plural),
            ));
        }
        let query = Query::parse(request.uri().query().unwrap_or_default());
        let method = request.method().clone();
        let body = request.into_body();
        match (method, target.name.is_some()) {
            (Method::GET, true) => self.get(&target),
            (Method::GET, false) if query.flag("watch") => self.watch(&target, &query),
            (Method::GET, false) => self.list(&target, &query),
            (Method::POST, false) => {
                let object = self.body_object(&target, &body)?;
                self.respond(StatusCode::CREATED, &target, self.create(object)?)
            }
            (Method::PUT, true) => {
                let object = self.body_object(&target, &body)?;
                self.respond(StatusCode::OK, &target, self.update(object)?)
            }
            (Method::PATCH, true) => {
                let patch: Value = serde_json::from_slice(&body).map_err(|e| {
                    Refusal::new(400, "BadRequest", format!("patch is not JSON: {e}"))
                })?;
                let mut object = self.get_object(&target)?;
                merge_patch(&mut object, &patch);
                self.respond(StatusCode::OK, &target, self.update(object)?)
            }
            (Method::DELETE, true) => {
                let namespace = target.namespace.as_deref().unwrap_or_default();
                let name = target.name.as_deref().unwrap_or_default();
                let deleted =
                    self.commit(|store| store.delete(target.resource, namespace, name))?;
                self.respond(StatusCode::OK, &target, deleted)
            }
            (method, _) => Err(Refusal::new(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported here"),
            )),
        }
    }

    fn get_object(&self, target: &Target) -> Result<Value, Refusal> {
        let (namespace, name) = (
            target.namespace.as_deref().unwrap_or_default(),
            target.name.as_deref().unwrap_or_default(),
        );
        self.store()
            .get(target.resource, namespace, name)
            .cloned()
            .ok_or_else(|| {
                Refusal::new(
                    404,
                    "NotFound",
                    format!("{} {name:?} not found", target.resource.plural),
                )
            })
    }

    fn get(&self, target: &Target) -> Result<Response<Body>, Refusal> {
        let object = self.get_object(target)?;
        self.respond(StatusCode::OK, target, object)
    }

    fn respond(
        &self,
        status: StatusCode,
        target: &Target,
        object: Value,
    ) -> Result<Response<Body>, Refusal> {
        Ok(json_response(status, &served(object, target, true)))
    }

    /// The object a create or update sends, placed in the path's namespace.
    fn body_object(&self, target: &Target, body: &Bytes) -> Result<Value, Refusal> {
        let mut object: Value = serde_json::from_slice(body).map_err(|e| {
            Refusal::new(400, "BadRequest", format!("body is not a JSON object: {e}"))
        })?;
        if let Some(namespace) = &target.namespace {
            match object["metadata"]["namespace"].as_str() {
                None => object["metadata"]["namespace"] = json!(namespace),
                Some(given) if given != namespace => {
                    return Err(Refusal::new(
                        400,
                        "BadRequest",
                        "the namespace of the object does not match the namespace of the request",
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(name) = &target.name {
            if object["metadata"]["name"].as_str() != Some(name) {
                return Err(Refusal::new(
                    400,
                    "BadRequest",
                    "the name of the object does not match the name in the URL",
                ));
            }
        }
        Ok(object)
    }

    fn list(&self, target: &Target, query: &Query) -> Result<Response<Body>, Refusal> {
        let selection = Selection::new(target, query)?;
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let store = self.store();
        let revision = store.revision();
        // A continue token: the list's revision and the last key served.
        let after = match query.get("continue").filter(|c| !c.is_empty()) {
            None => None,
            Some(token) => {
                let mut parts = token.splitn(3, '|');
                let (Some(rev), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(Refusal::new(400, "BadRequest", "continue key is not valid"));
                };
                let rev: u64 = rev
                    .parse()
                    .map_err(|_| Refusal::new(400, "BadRequest", "continue key is not valid"))?;
                if rev < store.oldest() {
                    return Err(Refusal::new(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
                }
                Some((ns.to_string(), name.to_string()))
            }
        };
        let mut matching = store
            .list(target.resource, target.namespace.as_deref())
            .filter(|object| selection.matches(object))
            .filter(|object| {
                after
                    .as_ref()
                    .is_none_or(|after| object_key(object) > *after)
            });
        let items: Vec<Value> = match limit {
            Some(limit) => matching.by_ref().take(limit).cloned().collect(),
            None => matching.by_ref().cloned().collect(),
        };
        let remaining = matching.count();
        let mut metadata = json!({ "resourceVersion": revision.to_string() });
        if remaining > 0 {
            if let Some(last) = items.last() {
                let (ns, name) = object_key(last);
                metadata["continue"] = json!(format!("{revision}|{ns}|{name}"));
                metadata["remainingItemCount"] = json!(remaining);
            }
        }
        // Built-in kinds' list items carry no apiVersion or kind; custom
        // resources' do, as the real server serves them.
        let builtin = !target.resource.group.contains("istio.io");
        let items: Vec<Value> = items
            .into_iter()
            .map(|o| served(o, target, !builtin))
            .collect();
        let list = json!({
            "apiVersion": target.resource.api_version(&target.version),
            "kind": format!("{}List", target.resource.kind),
            "metadata": metadata,
            "items": items,
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    fn watch(&self, target: &Target, query: &Query) -> Result<Response<Body>, Refusal> {
        let selection = Selection::new(target, query)?;
        let bookmarks = query.flag("allowWatchBookmarks");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        let from = query
            .get("resourceVersion")
            .filter(|rv| !rv.is_empty() && *rv != "0");
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(256);
        let (replay, mut live, start) = {
            let store = self.store();
            let live = self.changes.subscribe();
            let replay: Result<Vec<Arc<Change>>, u64> = match from {
                // No version: the current objects as synthetic ADDED events.
                None => Ok(store
                    .list(target.resource, target.namespace.as_deref())
                    .map(|object| {
                        Arc::new(Change {
                            revision: store.revision(),
                            event: EventType::Added,
                            resource: target.resource,
                            object: object.clone(),
                            previous: None,
                        })
                    })
                    .collect()),
                Some(rv) => {
                    let rv: u64 = rv.parse().map_err(|_| {
                        Refusal::new(
                            400,
                            "BadRequest",
                            format!("invalid resource version {rv:?}"),
                        )
                    })?;
                    store.since(rv).ok_or(rv)
                }
            };
            (replay, live, store.revision())
        };
        let mut dropped = self.faults.drop_watches.subscribe();
        let target = target.clone();
        tokio::spawn(async move {
            let send = |line: Value| {
                let sender = sender.clone();
                async move {
                    let mut text = serde_json::to_vec(&line).unwrap_or_default();
                    text.push(b'\n');
                    sender.send(Bytes::from(text)).await.is_ok()
                }
            };
            let replay = match replay {
                Ok(replay) => replay,
                Err(rv) => {
                    let expired = Refusal::new(
                        410,
                        "Expired",
                        format!("too old resource version: {rv} ({start})"),
                    );
                    send(json!({"type": "ERROR", "object": expired.status()})).await;
                    return;
                }
            };
            let mut seen = start;
            for change in replay {
                if let Some(event) = selection.event(&change, &target) {
                    if !send(event).await {
                        return;
                    }
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    change = live.recv() => match change {
                        Ok(change) => {
                            if change.revision <= seen {
                                continue; // already replayed
                            }
                            seen = change.revision;
                            if let Some(event) = selection.event(&change, &target) {
                                if !send(event).await {
                                    return;
                                }
                            }
                        }
                        // A watch that falls behind is closed, as the real
                        // server does; the client resumes or relists.
                        Err(RecvError::Lagged(_) | RecvError::Closed) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "apiVersion": target.resource.api_version(&target.version),
                            "kind": target.resource.kind,
                            "metadata": {"resourceVersion": seen.to_string()},
                        }});
                        if !send(bookmark).await {
                            return;
                        }
                    }
                    _ = &mut deadline => return,
                    _ = dropped.changed() => return,
                    _ = sender.closed() => return,
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let body = StreamBody::new(futures_util::StreamExt::map(stream, |bytes| {
            Ok(hyper::body::Frame::data(bytes))
        }));
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.boxed())
            .unwrap_or_default())
    }
}

/// Which objects a list or watch asked for.
struct Selection {
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Selection {
    fn new(target: &Target, query: &Query) -> Result<Self, Refusal> {
        let bad = |message: String| Refusal::new(400, "BadRequest", message);
        Ok(Self {
            namespace: target.namespace.clone(),
            labels: Selector::labels(query.get("labelSelector").unwrap_or_default())
                .map_err(bad)?,
            fields: Selector::fields(
                query.get("fieldSelector").unwrap_or_default(),
                target.resource.kind,
            )
            .map_err(bad)?,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.labels.matches_labels(object)
            && self.fields.matches_fields(object)
    }

    /// The event a watch with this selection sends for `change`, if any:
    /// an object that enters the selection is ADDED, one that leaves it
    /// DELETED.
    fn event(&self, change: &Change, target: &Target) -> Option<Value> {
        if change.resource.plural != target.resource.plural {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        let event = match (change.event, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Deleted, _, true) => EventType::Deleted,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            _ => return None,
        };
        Some(json!({"type": event.name(), "object": served(change.object.clone(), target, true)}))
    }
}

/// An object as served under the requested version.
fn served(mut object: Value, target: &Target, with_type: bool) -> Value {
    if let Some(fields) = object.as_object_mut() {
        if with_type {
            fields.insert(
                "apiVersion".into(),
                json!(target.resource.api_version(&target.version)),
            );
        } else {
            fields.remove("apiVersion");
            fields.remove("kind");
        }
    }
    object
}

fn object_key(object: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            if let Some(target) = target.as_object_mut() {
                target.remove(key);
            }
        } else {
            merge_patch(&mut target[key], value);
        }
    }
}

pub(crate) fn status_response(refusal: &Refusal) -> Response<Body> {
    let status = StatusCode::from_u16(refusal.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &refusal.status())
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap_or_default()
}

/// A query string, percent-decoded.
struct Query(BTreeMap<String, String>);

impl Query {
    fn parse(text: &str) -> Self {
        Self(
            text.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(key), decode(value))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
