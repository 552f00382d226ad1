//! The mesh view (`ambit_mesh_source::view`) served to the waypoints and
//! gateways on this node: an HTTP listener on loopback inside each such
//! pod's network namespace (only that pod reaches it), whose reads the
//! agent passes to the API server with its own credentials, pods reduced
//! to what the mesh model reads. Those proxies need no RBAC for the mesh.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use ambit_cni::protocol::PodRef;
use ambit_config::model::{Key, Mesh};
use ambit_mesh_source::view::{self, Passed, VIEW_PORT};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::netns::Netns;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ViewBody = UnsyncBoxBody<Bytes, BoxError>;

/// Connections one pod may hold open at once: a proxy's watches (one per
/// kind) and a few lists.
const MAX_CONNECTIONS: usize = 64;
/// How long a request's head may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest list of pods read whole to be reduced (the proxies read
/// lists in pages of 500).
const MAX_POD_LIST: usize = 256 << 20;
/// The longest watch event passed on (one pod, as JSON).
const MAX_EVENT: usize = 16 << 20;

/// What the views of this node's pods read the API server with, and who
/// may have one.
pub struct MeshView {
    client: kube::Client,
    /// The service accounts of the waypoints and gateways (`view::serves`).
    allowed: BTreeSet<Key>,
    requests: Family<OutcomeLabels, Counter>,
}

/// What became of a request to a view.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Outcome {
    /// Passed to the API server (whatever it answered).
    Passed,
    /// Not in the view: answered 403.
    Refused,
    /// The API server could not be reached, or its answer read.
    Failed,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Passed => "passed",
            Self::Refused => "refused",
            Self::Failed => "failed",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

/// One pod's view; dropping it closes its listener and connections.
pub struct ViewServer {
    task: JoinHandle<()>,
}

impl Drop for ViewServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MeshView {
    /// The view, its requests counted in `registry`
    /// (`ambit_mesh_view_requests_total` by outcome).
    pub fn new(client: kube::Client, allowed: BTreeSet<Key>, registry: &mut Registry) -> Arc<Self> {
        let requests = Family::default();
        registry.register(
            "ambit_mesh_view_requests",
            "Requests to the mesh view served to this node's waypoints and gateways, by outcome",
            requests.clone(),
        );
        Arc::new(Self {
            client,
            allowed,
            requests,
        })
    }

    /// Whether the pod `key` of `mesh` is to be served the view.
    pub fn serves(&self, mesh: &Mesh, key: &Key) -> bool {
        mesh.workloads
            .get(key)
            .is_some_and(|workload| view::serves(key, workload, &self.allowed))
    }

    /// Starts serving `pod` the view, in its namespace `netns`. Beside a
    /// restarting agent's listener (SO_REUSEPORT), as the pods' others.
    pub fn serve(self: &Arc<Self>, pod: &PodRef, netns: &Netns) -> std::io::Result<ViewServer> {
        let address = SocketAddrV4::new(Ipv4Addr::LOCALHOST, VIEW_PORT);
        let socket = netns
            .run(|| crate::proxy::listener(address.into(), false))
            .map_err(std::io::Error::other)??;
        let listener = TcpListener::from_std(socket.into())?;
        let task = tokio::spawn(accept(self.clone(), listener, pod.clone()));
        Ok(ViewServer { task })
    }

    /// Answers one request, and counts it by its outcome.
    async fn answer(&self, request: Request<Incoming>) -> Response<ViewBody> {
        let (outcome, response) = match self.pass(request).await {
            Ok(response) => (Outcome::Passed, response),
            Err((outcome, response)) => (outcome, response),
        };
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        response
    }

    /// The API server's answer, pods reduced; else the view's own answer
    /// and why: refused (403) unless the view passes the request, failed
    /// when the API server cannot be reached.
    async fn pass(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<ViewBody>, (Outcome, Response<ViewBody>)> {
        let uri = request.uri();
        let passed = match view::admit(request.method().as_str(), uri.path(), uri.query()) {
            Ok(passed) => passed,
            Err(reason) => {
                let refused = status(StatusCode::FORBIDDEN, "Forbidden", &reason);
                return Err((Outcome::Refused, refused));
            }
        };
        let path = uri.path_and_query().map_or("/", |path| path.as_str());
        let upstream = Request::get(path)
            .header(hyper::header::ACCEPT, "application/json")
            .body(kube::client::Body::empty());
        let answered = match upstream {
            Ok(upstream) => self.client.send(upstream).await,
            Err(error) => {
                let refused = status(StatusCode::BAD_REQUEST, "BadRequest", &error.to_string());
                return Err((Outcome::Refused, refused));
            }
        };
        let response = match answered {
            Ok(response) => response,
            Err(error) => {
                let reason = format!("the node agent could not reach the API server: {error}");
                let failed = status(StatusCode::BAD_GATEWAY, "ServiceUnavailable", &reason);
                return Err((Outcome::Failed, failed));
            }
        };
        let (parts, body) = response.into_parts();
        let body = match passed {
            Passed::Pods { watch: true } if parts.status.is_success() => reduced_events(body),
            Passed::Pods { watch: false } if parts.status.is_success() => {
                match reduced_list(body).await {
                    Ok(body) => body,
                    Err(reason) => {
                        let failed = status(StatusCode::BAD_GATEWAY, "InternalError", &reason);
                        return Err((Outcome::Failed, failed));
                    }
                }
            }
            // Anything else, and the API server's refusals, as they are.
            _ => body.map_err(BoxError::from).boxed_unsync(),
        };
        let mut response = Response::new(body);
        *response.status_mut() = parts.status;
        if let Some(content_type) = parts.headers.get(hyper::header::CONTENT_TYPE) {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, content_type.clone());
        }
        Ok(response)
    }
}

/// Accepts the pod's connections, each served on its own task, at most
/// [`MAX_CONNECTIONS`] at once (past them a connection is closed). The
/// tasks end with this one: a pod no longer labelled for the view keeps no
/// watch open.
async fn accept(view: Arc<MeshView>, listener: TcpListener, pod: PodRef) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%pod, %error, "accepting on the mesh view");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            tracing::warn!(%pod, limit = MAX_CONNECTIONS, "too many connections to the mesh view: one closed");
            continue;
        }
        let view = view.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let view = view.clone();
                async move { Ok::<_, std::convert::Infallible>(view.answer(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A list of pods, read whole (a page of it, as proxies read lists), each
/// reduced.
async fn reduced_list(body: kube::client::Body) -> Result<ViewBody, String> {
    let collected = Limited::new(body, MAX_POD_LIST)
        .collect()
        .await
        .map_err(|error| format!("reading the list of pods: {error}"))?;
    let list = serde_json::from_slice(&collected.to_bytes())
        .map_err(|error| format!("an unreadable list of pods: {error}"))?;
    let reduced = serde_json::to_vec(&view::reduce_pod_list(list))
        .map_err(|error| format!("writing the list of pods: {error}"))?;
    Ok(full(reduced))
}

/// A watch's events (one JSON document a line), each pod reduced as it
/// passes; a line that is not JSON is dropped, never passed on whole.
fn reduced_events(body: kube::client::Body) -> ViewBody {
    let events = futures_util::stream::unfold(
        (body, Lines::default()),
        |(mut body, mut lines)| async move {
            loop {
                if let Some(line) = lines.next_line() {
                    let Ok(event) = serde_json::from_slice(&line) else {
                        continue;
                    };
                    let mut reduced =
                        serde_json::to_vec(&view::reduce_pod_event(event)).unwrap_or_default();
                    reduced.push(b'\n');
                    let frame = Ok(Frame::data(Bytes::from(reduced)));
                    return Some((frame, (body, lines)));
                }
                if lines.pending.len() > MAX_EVENT {
                    let error: BoxError = format!("a watch event over {MAX_EVENT} bytes").into();
                    return Some((Err(error), (body, Lines::default())));
                }
                match body.frame().await? {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            lines.pending.extend_from_slice(&data);
                        }
                    }
                    Err(error) => return Some((Err(error.into()), (body, Lines::default()))),
                }
            }
        },
    );
    StreamBody::new(events).boxed_unsync()
}

/// Bytes read but not yet passed on, split at newlines; each byte is
/// looked at once, however many reads a long line takes.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
    /// How far `pending` holds no newline.
    scanned: usize,
}

impl Lines {
    /// The next whole line, its newline included.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        let unscanned = &self.pending[self.scanned..];
        match unscanned.iter().position(|byte| *byte == b'\n') {
            Some(at) => {
                let end = self.scanned + at;
                self.scanned = 0;
                Some(self.pending.drain(..=end).collect())
            }
            None => {
                self.scanned = self.pending.len();
                None
            }
        }
    }
}

fn full(bytes: Vec<u8>) -> ViewBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An answer as the API server words one (a `Status`), which Kubernetes
/// clients show by its message.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<ViewBody> {
    let status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = Response::new(full(status.to_string().into_bytes()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_whole_however_the_reads_split_them() {
        let mut lines = Lines::default();
        let read = |bytes: &[u8], lines: &mut Lines| {
            lines.pending.extend_from_slice(bytes);
            std::iter::from_fn(|| lines.next_line()).collect::<Vec<_>>()
        };
        assert!(read(b"{\"type\":", &mut lines).is_empty());
        assert!(read(b"\"ADDED\"}", &mut lines).is_empty());
        assert_eq!(
            read(b"\n{\"a\":1}\n{\"b\"", &mut lines),
            [b"{\"type\":\"ADDED\"}\n".to_vec(), b"{\"a\":1}\n".to_vec()]
        );
        assert_eq!(read(b":2}\n", &mut lines), [b"{\"b\":2}\n".to_vec()]);
        assert!(lines.pending.is_empty());
    }
}
