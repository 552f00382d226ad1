//! The test app (`ambit-testapp`): what it says, and how the test bed
//! starts its server and runs its clients in pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::{Cluster, Place, Pod, Process};

/// The body of every HTTP response the test app's server sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub app: String,
    pub version: String,
    /// The client address the server saw (`ip:port`).
    pub peer: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// The path and query it was asked for.
    #[serde(default)]
    pub path: String,
    /// The user and trace headers it received, which it passes on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forwarded: BTreeMap<String, String>,
    /// What a proxy in front told it of the client: `x-forwarded-for`,
    /// `x-forwarded-proto`, `x-envoy-external-address`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub proxied: BTreeMap<String, String>,
    /// The replies of the services it called on, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Reply>,
}

impl Reply {
    /// Who answered down the chain: `productpage/v1 -> [details/v1,
    /// reviews/v2 -> [ratings/v1]]`.
    pub fn chain(&self) -> String {
        let this = format!("{}/{}", self.app, self.version);
        match self.calls.as_slice() {
            [] => this,
            calls => {
                let calls: Vec<String> = calls.iter().map(Reply::chain).collect();
                format!("{this} -> [{}]", calls.join(", "))
            }
        }
    }

    /// Whether it came from the service called, rather than standing for
    /// a call that failed (which has no peer).
    pub fn answered(&self) -> bool {
        !self.peer.is_empty()
    }

    /// Whether every service down the chain saw the request id this one
    /// saw: one trace, forwarded hop by hop.
    pub fn one_trace(&self) -> bool {
        let id = self.forwarded.get("x-request-id");
        // A call that failed has no answer to say what it saw.
        fn all_saw(reply: &Reply, id: &String) -> bool {
            reply.forwarded.get("x-request-id") == Some(id)
                && reply
                    .calls
                    .iter()
                    .filter(|call| call.answered())
                    .all(|call| all_saw(call, id))
        }
        id.is_some_and(|id| all_saw(self, id))
    }
}

/// What the test app's HTTP client prints after its requests.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct HttpSummary {
    pub requests: usize,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, usize>,
    /// Responses by answering `app/version` (`unknown` when the body was not
    /// a test-app reply).
    pub versions: BTreeMap<String, usize>,
    /// Peer addresses (IP only) the servers reported seeing.
    pub peers: BTreeMap<String, usize>,
    /// Responses by the path (and query) the answering server was asked for.
    #[serde(default)]
    pub paths: BTreeMap<String, usize>,
    /// Responses by the protocol the answering server was spoken to in.
    #[serde(default)]
    pub protocols: BTreeMap<String, usize>,
    /// Responses of servers that called on others, by [`Reply::chain`].
    #[serde(default)]
    pub chains: BTreeMap<String, usize>,
    /// Of those, the responses whose whole chain saw one request id.
    #[serde(default)]
    pub one_trace: usize,
    /// The response headers asked for (`HttpLoad::show_header`), as
    /// `name: value`, by how many responses carried each.
    #[serde(default)]
    pub headers: BTreeMap<String, usize>,
    /// What the answering servers were told of the client by a proxy
    /// ([`Reply::proxied`]), as `name: value`, by how many answers.
    #[serde(default)]
    pub proxied: BTreeMap<String, usize>,
    /// The user and trace headers the answering servers saw
    /// ([`Reply::forwarded`]), as `name: value`, by how many answers.
    #[serde(default)]
    pub forwarded: BTreeMap<String, usize>,
    /// Requests that got no response at all.
    pub errors: usize,
    pub first_error: Option<String>,
}

/// What `echo-stream` prints: one connection kept open, a line echoed
/// every interval.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub sent: usize,
    pub echoed: usize,
    pub error: Option<String>,
}

/// What `send` prints: bytes sent then the write side closed, and what the
/// sink server counted before it answered.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
pub struct TransferSummary {
    /// From connecting to the sink's answer.
    pub seconds: f64,
    pub bytes_sent: u64,
    pub crc_sent: u32,
    pub bytes_received_by_server: u64,
    pub crc_received_by_server: u32,
}

/// What `latency` prints: percentiles of request latency, in microseconds.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct LatencySummary {
    pub requests: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// From the first request sent to the last answer: at a rate above
    /// what the path can carry, requests over it are the saturation rate.
    #[serde(default)]
    pub elapsed_us: u64,
}

/// What `echo-many` prints.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct ConcurrencySummary {
    pub connections: usize,
    /// Connections that were all open at once and then echoed correctly.
    pub completed: usize,
    pub first_error: Option<String>,
}

impl HttpSummary {
    /// Checks that all `requests` got 200 from `version` (`app/version`),
    /// which saw `peer` as the caller.
    pub fn expect_all(
        &self,
        requests: usize,
        version: &str,
        peer: std::net::Ipv4Addr,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.status(200) == requests
                && self.versions.get(version) == Some(&requests)
                && self.peers.get(&peer.to_string()) == Some(&requests),
            "expected {requests} x 200 from {version} seeing {peer}, got {self:?}"
        );
        Ok(())
    }

    /// Number of responses with this status code.
    pub fn status(&self, code: u16) -> usize {
        self.statuses.get(&code).copied().unwrap_or(0)
    }
}

/// How long a test-app client may run before the test bed gives up on it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The test app's server, to be started in a pod.
#[derive(Clone, Debug)]
pub struct Server {
    app: String,
    version: String,
    /// (flag, port) for every listener.
    listeners: Vec<(&'static str, u16)>,
    sink_stall: Duration,
    answer_delay: Duration,
    /// URLs it calls for every ordinary request.
    calls: Vec<String>,
    call_timeout: Option<Duration>,
    /// Every Nth request fails with this status (0: none).
    fail_every: (u64, u16),
    log_requests: bool,
    /// The certificate and key its HTTPS listeners present.
    certificate: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Where its listeners bind: IPv4's every address, or IPv6's (which
    /// takes IPv4 too, its callers then shown as IPv4-mapped).
    every_address: &'static str,
}

impl Server {
    pub fn new(app: &str, version: &str) -> Self {
        Self {
            app: app.into(),
            version: version.into(),
            listeners: Vec::new(),
            sink_stall: Duration::ZERO,
            answer_delay: Duration::ZERO,
            calls: Vec::new(),
            call_timeout: None,
            fail_every: (0, 503),
            log_requests: false,
            certificate: None,
            every_address: "0.0.0.0",
        }
    }

    /// HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on `port`, presenting the
    /// certificate chain and key in these PEM files.
    pub fn https(
        mut self,
        port: u16,
        certificate: &std::path::Path,
        key: &std::path::Path,
    ) -> Self {
        self.listeners.push(("https", port));
        self.certificate = Some((certificate.into(), key.into()));
        self
    }

    /// Each call gives up after `timeout` (five seconds unless said).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// For every ordinary request, GET `url` first, forwarding the user and
    /// trace headers as Bookinfo's services do.
    pub fn calls(mut self, url: &str) -> Self {
        self.calls.push(url.into());
        self
    }

    /// Listens on every address of both families, for a dual-stack pod.
    pub fn dual_stack(mut self) -> Self {
        self.every_address = "[::]";
        self
    }

    /// HTTP/1.1 and h2c on `port`.
    pub fn http(mut self, port: u16) -> Self {
        self.listeners.push(("http", port));
        self
    }

    /// TCP echo on `port`.
    pub fn echo(mut self, port: u16) -> Self {
        self.listeners.push(("echo", port));
        self
    }

    /// A sink on `port`: counts and checksums what it receives until the
    /// client's half-close, then answers.
    pub fn sink(mut self, port: u16) -> Self {
        self.listeners.push(("sink", port));
        self
    }

    /// Sinks wait `stall` after accepting before they read.
    pub fn stall_sinks(mut self, stall: Duration) -> Self {
        self.sink_stall = stall;
        self
    }

    /// The first HTTP request and every `n`th after it are answered with
    /// `status` (once their bodies are read), like a replica failing
    /// part of its traffic: `n = 2` fails half, `n = 1` all.
    pub fn fail_every(mut self, n: u64, status: u16) -> Self {
        self.fail_every = (n, status);
        self
    }

    /// Logs each HTTP request it receives (`request: METHOD HOST URI`) to
    /// its output.
    pub fn log_requests(mut self) -> Self {
        self.log_requests = true;
        self
    }

    /// Every HTTP answer waits `delay` first, like a slow replica.
    pub fn answer_delay(mut self, delay: Duration) -> Self {
        self.answer_delay = delay;
        self
    }

    /// Starts it in `pod` and returns once every listener accepts.
    pub fn start(&self, cluster: &Cluster, pod: &Pod) -> anyhow::Result<Process> {
        let mut args = vec![
            "serve".to_string(),
            format!("--app={}", self.app),
            format!("--version={}", self.version),
            format!("--sink-stall-ms={}", self.sink_stall.as_millis()),
            format!("--answer-delay-ms={}", self.answer_delay.as_millis()),
            format!("--fail-every={}", self.fail_every.0),
            format!("--fail-status={}", self.fail_every.1),
        ];
        if self.log_requests {
            args.push("--log-requests".into());
        }
        if let Some((certificate, key)) = &self.certificate {
            args.push(format!("--tls-cert={}", certificate.display()));
            args.push(format!("--tls-key={}", key.display()));
        }
        args.extend(
            self.listeners
                .iter()
                .map(|(flag, port)| format!("--{flag}={}:{port}", self.every_address)),
        );
        args.extend(self.calls.iter().map(|url| format!("--call={url}")));
        args.extend(
            self.call_timeout
                .map(|timeout| format!("--call-timeout-ms={}", timeout.as_millis())),
        );
        let binary = cluster.binaries().get(BINARY)?;
        let label = format!("{}-{}", self.app, self.version);
        let mut server = cluster.spawn(pod.place(), &label, &binary, args)?;
        for (_, port) in &self.listeners {
            let addr = SocketAddr::from((pod.ip, *port));
            pod.place()
                .wait_for_listener(addr, START_TIMEOUT)
                .with_context(|| {
                    server
                        .check_running()
                        .err()
                        .map(|e| format!("{e:#}"))
                        .unwrap_or_default()
                })?;
        }
        Ok(server)
    }
}

/// A run of the test app's HTTP client.
#[derive(Clone, Debug)]
pub struct HttpLoad {
    requests: usize,
    http2: bool,
    reconnect: bool,
    interval: Duration,
    headers: Vec<(String, String)>,
    method: String,
    cookies: bool,
    show_headers: Vec<String>,
    connect: Option<SocketAddr>,
    tls: Option<ClientTls>,
}

/// What an HTTPS client trusts and presents, as files.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca: std::path::PathBuf,
    /// A client certificate and its key.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl ClientTls {
    fn args(&self) -> Vec<String> {
        let mut args = vec![format!("--tls-ca={}", self.ca.display())];
        if let Some((cert, key)) = &self.client {
            args.push(format!("--tls-client-cert={}", cert.display()));
            args.push(format!("--tls-client-key={}", key.display()));
        }
        args
    }
}

impl HttpLoad {
    /// `requests` HTTP/1.1 requests, one after another on one connection.
    pub fn new(requests: usize) -> Self {
        Self {
            requests,
            http2: false,
            reconnect: false,
            interval: Duration::ZERO,
            headers: Vec::new(),
            method: "GET".into(),
            cookies: false,
            show_headers: Vec::new(),
            connect: None,
            tls: None,
        }
    }

    /// Connects to `address` whatever host the URL names (which stays the
    /// Host and the TLS server name), as curl's `--resolve`.
    pub fn connect(mut self, address: SocketAddr) -> Self {
        self.connect = Some(address);
        self
    }

    /// How an `https` URL is spoken to.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A header every request carries.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The method of every request (GET unless said).
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    /// The responses' `name` header is counted by value in the summary.
    pub fn show_header(mut self, name: &str) -> Self {
        self.show_headers.push(name.into());
        self
    }

    /// Cookies that answers set are sent with the later requests.
    pub fn cookies(mut self) -> Self {
        self.cookies = true;
        self
    }

    /// HTTP/2 with prior knowledge (h2c).
    pub fn http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }

    /// `requests` on a new connection each, one every 5 ms: the steady
    /// churn that a restart or an upgrade of the agents must not break.
    pub fn churn(requests: usize) -> Self {
        Self::new(requests)
            .reconnect()
            .interval(Duration::from_millis(5))
    }

    /// A new connection for every request.
    pub fn reconnect(mut self) -> Self {
        self.reconnect = true;
        self
    }

    /// A pause between requests.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    fn args(&self, url: &str) -> Vec<String> {
        let mut args = vec![
            "http".to_string(),
            format!("--url={url}"),
            format!("--requests={}", self.requests),
            format!("--interval-ms={}", self.interval.as_millis()),
            format!("--method={}", self.method),
        ];
        if self.http2 {
            args.push("--http2".to_string());
        }
        if self.reconnect {
            args.push("--reconnect".to_string());
        }
        if self.cookies {
            args.push("--cookies".to_string());
        }
        args.extend(
            self.show_headers
                .iter()
                .map(|name| format!("--show-header={name}")),
        );
        if let Some(address) = self.connect {
            args.push(format!("--connect={address}"));
        }
        args.extend(self.tls.iter().flat_map(ClientTls::args));
        args.extend(
            self.headers
                .iter()
                .map(|(name, value)| format!("--header={name}:{value}")),
        );
        args
    }

    /// Runs the client in `from` to completion.
    pub fn run(&self, cluster: &Cluster, from: &Place, url: &str) -> anyhow::Result<HttpSummary> {
        last_json(&run_client(cluster, from, &self.args(url))?)
    }

    /// Starts the client in `from` in the background; read its summary with
    /// [`last_json`] on its output once it has exited.
    pub fn spawn(&self, cluster: &Cluster, from: &Place, url: &str) -> anyhow::Result<Process> {
        let binary = cluster.binaries().get(BINARY)?;
        cluster.spawn(from, "http-client", &binary, self.args(url))
    }
}

impl std::fmt::Display for HttpLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let protocol = if self.http2 { "HTTP/2" } else { "HTTP/1.1" };
        let connections = if self.reconnect {
            "a connection per request"
        } else {
            "one connection"
        };
        write!(f, "{} {protocol} requests, {connections}", self.requests)
    }
}

/// POSTs `bytes` bytes from `from` to the test app's `/upload` at `url`,
/// in HTTP/1.1 or h2c; returns what was sent and what the server counted.
pub fn upload(
    cluster: &Cluster,
    from: &Place,
    url: &str,
    bytes: u64,
    http2: bool,
) -> anyhow::Result<TransferSummary> {
    let mut args = vec![
        "upload".to_string(),
        format!("--url={url}"),
        format!("--bytes={bytes}"),
    ];
    if http2 {
        args.push("--http2".into());
    }
    last_json(&run_client(cluster, from, &args)?)
}

/// One gRPC-like h2c request from `from` to the test app's `/trailers` at
/// `url`: `{status, body, trailers}`.
pub fn trailers(
    cluster: &Cluster,
    from: &Place,
    url: &str,
    echo: &str,
) -> anyhow::Result<serde_json::Value> {
    let args = [
        "trailers".to_string(),
        format!("--url={url}"),
        format!("--echo={echo}"),
    ];
    last_json(&run_client(cluster, from, &args)?)
}

/// A conversation of messages, each echoed before the next is sent.
#[derive(Clone, Copy, Debug)]
pub enum Messages {
    /// A gRPC-like bidirectional stream to the test app's `/stream`, over
    /// h2c: `{status, echoed, trailers}`.
    GrpcStream,
    /// A WebSocket to the test app's `/ws`: `{status, accepted, echoed}`.
    WebSocket,
}

/// `messages` messages from `from` over `url`, each echoed before the
/// next is sent; the client's summary.
pub fn exchange_messages(
    cluster: &Cluster,
    from: &Place,
    kind: Messages,
    url: &str,
    messages: usize,
) -> anyhow::Result<serde_json::Value> {
    let mode = match kind {
        Messages::GrpcStream => "stream",
        Messages::WebSocket => "websocket",
    };
    let args = [
        mode.to_string(),
        format!("--url={url}"),
        format!("--messages={messages}"),
    ];
    last_json(&run_client(cluster, from, &args)?)
}

/// Sends `message` from `from` to the echo server at `addr`; returns what came back.
pub fn echo(
    cluster: &Cluster,
    from: &Place,
    addr: SocketAddr,
    message: &str,
) -> anyhow::Result<String> {
    run_client(
        cluster,
        from,
        &[
            "echo".into(),
            format!("--addr={addr}"),
            format!("--message={message}"),
        ],
    )
}

/// The addresses `name` resolves to in `from`, as its system resolver
/// gives them (A and AAAA), or the A records `server` answers.
pub fn resolve(
    cluster: &Cluster,
    from: &Place,
    name: &str,
    server: Option<SocketAddr>,
) -> anyhow::Result<Vec<IpAddr>> {
    let mut args = vec!["resolve".into(), format!("--name={name}")];
    args.extend(server.map(|server| format!("--server={server}")));
    let output = run_client(cluster, from, &args)?;
    output
        .lines()
        .map(|line| {
            line.parse()
                .with_context(|| format!("{line:?} is no address"))
        })
        .collect()
}

/// Starts, in the background, one connection from `from` to the echo server
/// at `addr` that echoes `lines` lines, one every `interval`; its output
/// ends with a [`StreamSummary`] (see [`last_json`]).
pub fn echo_stream(
    cluster: &Cluster,
    from: &Place,
    addr: SocketAddr,
    lines: usize,
    interval: Duration,
) -> anyhow::Result<Process> {
    let binary = cluster.binaries().get(BINARY)?;
    let args = [
        "echo-stream".into(),
        format!("--addr={addr}"),
        format!("--lines={lines}"),
        format!("--interval-ms={}", interval.as_millis()),
    ];
    cluster.spawn(from, "echo-stream", &binary, args)
}

/// Sends `bytes` from `from` to the sink at `addr`, half-closes, and reads
/// the sink's count and checksum.
pub fn send(
    cluster: &Cluster,
    from: &Place,
    addr: SocketAddr,
    bytes: u64,
) -> anyhow::Result<TransferSummary> {
    send_after_idle(cluster, from, addr, bytes, Duration::ZERO)
}

/// [`send`], the client first staying `idle` after it connects.
pub fn send_after_idle(
    cluster: &Cluster,
    from: &Place,
    addr: SocketAddr,
    bytes: u64,
    idle: Duration,
) -> anyhow::Result<TransferSummary> {
    last_json(&run_client(
        cluster,
        from,
        &[
            "send".into(),
            format!("--addr={addr}"),
            format!("--bytes={bytes}"),
            format!("--idle-first-ms={}", idle.as_millis()),
        ],
    )?)
}

/// Opens `connections` connections from `from` to the echo server at `addr`
/// at once, then echoes on each.
pub fn echo_many(
    cluster: &Cluster,
    from: &Place,
    addr: SocketAddr,
    connections: usize,
) -> anyhow::Result<ConcurrencySummary> {
    let args = [
        "echo-many".into(),
        format!("--addr={addr}"),
        format!("--connections={connections}"),
    ];
    last_json(&run_client(cluster, from, &args)?)
}

/// How the latency client uses connections.
#[derive(Clone, Copy, Debug)]
pub enum Connections {
    /// This many connections, opened first and kept alive.
    KeptAlive(u32),
    /// A new connection for each request, its setup timed with it; at most
    /// this many at once.
    PerRequest(u32),
}

/// Sends GET `url` from `from` at `rate` requests per second for `seconds`.
pub fn latency(
    cluster: &Cluster,
    from: &Place,
    url: &str,
    rate: u32,
    seconds: u32,
    connections: Connections,
) -> anyhow::Result<LatencySummary> {
    latency_via(cluster, from, url, (rate, seconds), connections, None)
}

/// [`latency`], connecting to `address` (whatever host the URL names), in
/// TLS as `tls` says for an `https` URL.
pub fn latency_via(
    cluster: &Cluster,
    from: &Place,
    url: &str,
    (rate, seconds): (u32, u32),
    connections: Connections,
    via: Option<(SocketAddr, Option<&ClientTls>)>,
) -> anyhow::Result<LatencySummary> {
    let mut args = vec![
        "latency".into(),
        format!("--url={url}"),
        format!("--rate={rate}"),
        format!("--seconds={seconds}"),
    ];
    let (count, per_request) = match connections {
        Connections::KeptAlive(count) => (count, false),
        Connections::PerRequest(count) => (count, true),
    };
    args.push(format!("--connections={count}"));
    if per_request {
        args.push("--new-connection-per-request".into());
    }
    if let Some((address, tls)) = via {
        args.push(format!("--connect={address}"));
        args.extend(tls.iter().flat_map(|tls| tls.args()));
    }
    last_json(&run_client(cluster, from, &args)?)
}

/// The JSON summary a client prints as its last line.
pub fn last_json<T: serde::de::DeserializeOwned>(output: &str) -> anyhow::Result<T> {
    let last = output.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("the client printed {output:?}"))
}

fn run_client(cluster: &Cluster, from: &Place, args: &[String]) -> anyhow::Result<String> {
    let binary = cluster.binaries().get(BINARY)?;
    let output = cluster.run(from, &binary, args, CLIENT_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "`ambit-testapp {}` in {} failed ({}): {}",
            args.join(" "),
            from.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

pub(crate) const BINARY: &str = "ambit-testapp";

/// The test app as a DNS server in `pod`, on UDP port 53, knowing
/// `records` (name, address) and no other name; returns once it listens.
pub fn dns_server(
    cluster: &Cluster,
    pod: &Pod,
    records: &[(&str, std::net::Ipv4Addr)],
) -> anyhow::Result<Process> {
    let mut args = vec!["dns".to_string(), "--listen=0.0.0.0:53".to_string()];
    args.extend(
        records
            .iter()
            .map(|(name, address)| format!("--record={name}={address}")),
    );
    let binary = cluster.binaries().get(BINARY)?;
    let mut server = cluster.spawn(pod.place(), "dns", &binary, args)?;
    crate::wait_for("the DNS server", START_TIMEOUT, || {
        server.check_running()?;
        Ok(server.output().contains("dns serving"))
    })?;
    Ok(server)
}
