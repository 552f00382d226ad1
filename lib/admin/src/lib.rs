//! What every Ambit binary serves and does around its real work: readiness
//! for the kubelet's probe and Prometheus metrics, logging set-up, and waiting
//! for the signal that starts a graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

pub mod accept;
pub mod health;
pub mod listen;
mod logging;
pub mod probe;

pub use logging::{flush_access_log, init_logging, AccessLog, LogArgs, LogFormat};

use accept::Acceptor;

/// Connections one admin listener holds at once, and from any one source:
/// probes and scrapes are few; an idle crowd must not take the node's
/// descriptors, nor one caller the kubelet's place.
const MAX_ADMIN_CONNECTIONS: usize = 64;
const MAX_ADMIN_CONNECTIONS_PER_SOURCE: usize = 16;
/// The longest an admin connection stays open, keep-alive included.
const ADMIN_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a request's headers may take to arrive, and an idle
/// connection to send the next.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Readiness path, as Istio's proxies serve it.
pub const READY_PATH: &str = "/healthz/ready";
/// Where the loopback admin port takes a new log filter.
pub const LOGGING_PATH: &str = "/logging";
/// Liveness path: fails once a process's watchdog stops beating.
pub const LIVE_PATH: &str = "/healthz/live";
/// How long a watched process may go without a heartbeat and still count
/// as live.
pub const LIVENESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// Prometheus scrape path.
pub const METRICS_PATH: &str = "/metrics";
/// The effective configuration, as Istio's proxies name it.
pub const CONFIG_DUMP_PATH: &str = "/config_dump";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("binding the probe socket {}: {source}", path.display())]
    ProbeSocket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("installing the handler for {signal}: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// Whether the process is ready for traffic, and live; cloned into whoever
/// decides.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<Health>);

#[derive(Debug)]
struct Health {
    ready: AtomicBool,
    started: std::time::Instant,
    /// Milliseconds from `started` to the last heartbeat; 0 while no
    /// watchdog beats (the process then counts as live while it answers).
    last_beat: AtomicU64,
    /// Milliseconds from `started` to the last failed accept of any
    /// listener; 0 for none.
    last_accept_failure: AtomicU64,
}

/// How long after an accept failed the process stays not ready.
pub const ACCEPT_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

impl Default for Health {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            started: std::time::Instant::now(),
            last_beat: AtomicU64::new(0),
            last_accept_failure: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Milliseconds since `started`, at least 1 (0 stands for never).
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether `at` (as [`Health::now`] gave it) is more than `window` ago.
    fn longer_ago(&self, at: u64, window: std::time::Duration) -> bool {
        at == 0 || self.now().saturating_sub(at) > window.as_millis() as u64
    }
}

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    /// Ready, live, and accepting: a wedged process, or one whose
    /// listeners failed to accept within [`ACCEPT_QUIET`] (out of
    /// descriptors), takes no traffic.
    pub fn is_ready(&self) -> bool {
        let last_failure = self.0.last_accept_failure.load(Ordering::Acquire);
        self.0.ready.load(Ordering::Acquire)
            && self.is_live()
            && self.0.longer_ago(last_failure, ACCEPT_QUIET)
    }

    /// A listener failed to accept just now.
    pub fn accept_failed(&self) {
        self.0
            .last_accept_failure
            .store(self.0.now(), Ordering::Release);
    }

    /// A watchdog's heartbeat: what it watches made progress just now.
    /// From the first one on, the process is live only while they keep
    /// coming, at most [`LIVENESS_WINDOW`] apart.
    pub fn beat(&self) {
        self.0.last_beat.store(self.0.now(), Ordering::Release);
    }

    pub fn is_live(&self) -> bool {
        let last = self.0.last_beat.load(Ordering::Acquire);
        last == 0 || !self.0.longer_ago(last, LIVENESS_WINDOW)
    }
}

/// The CPUs this process may run on (its cgroup's quota aside), at least 1:
/// what worker-thread defaults scale with.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The runtime a proxy runs on: a single-threaded one for one worker (on
/// few cores, moving each connection's work between threads costs more than
/// it gains), else one of that many threads.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    builder.enable_all().build()
}

/// Makes glibc's malloc give memory back after a burst. By default it raises
/// its mmap threshold to the size of the largest block freed so far, so the
/// megabyte buffers of one bulk transfer stay resident for the life of a
/// proxy, in one arena per thread. Fixed thresholds keep blocks over 2 MiB
/// in their own mappings and trim free heap tops over `trim_above`; two
/// arenas are enough for a proxy's few worker threads. A trim threshold
/// under what a busy HBONE receiver frees and takes again at each frame
/// (HTTP/2's read buffer grows to each 256 KiB frame, several in flight)
/// gives the heap top back to the kernel to be faulted in again: at 1 MiB,
/// some 27,000 times per 2 GiB an agent received, 4% of its CPU in bulk.
#[cfg_attr(not(target_env = "gnu"), allow(unused_variables))]
pub fn limit_heap_retention(trim_above: usize) {
    #[cfg(target_env = "gnu")]
    for (option, value) in [
        (libc::M_ARENA_MAX, 2),
        (libc::M_MMAP_THRESHOLD, 2 << 20),
        (libc::M_TRIM_THRESHOLD, trim_above as libc::c_int),
    ] {
        // SAFETY: mallopt only sets allocator parameters; called before any
        // thread exists. A refusal leaves glibc's default, which is only
        // less frugal.
        unsafe { libc::mallopt(option, value) };
    }
}

/// The proxies' allocator in their static (musl) builds, the images':
/// musl's own serialises every allocation on one lock. jemalloc, not
/// mimalloc: with mimalloc the copy of each TLS record's plaintext into the
/// record rustls allocated for it (before the agent sealed its records
/// itself) took a third of the sending agent's CPU, and a 2 GiB mTLS
/// transfer cost the machine 2.2-2.6 CPU-s/GiB with agents of 31 and
/// 56 MiB, against 2.0-2.3 and 19 and 24 MiB with jemalloc. (glibc builds
/// keep glibc's, tuned by [`limit_heap_retention`]: 1.85-1.93.)
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options in the static builds, read at its first allocation.
/// jemalloc hands freed pages back to the kernel over 10 s, but only as it
/// allocates: an agent left idle after a burst kept them for good (31 MiB
/// after a 2 GiB mTLS transfer, no less 16 s later). One background thread
/// hands them back on time whatever the proxy does (18 MiB 12 s after
/// the same transfer), at the same CPU per byte. Handing them back sooner
/// (`dirty_decay_ms:1000`) cost some 4% more CPU per byte in bulk.
#[cfg(target_env = "musl")]
const JEMALLOC_OPTIONS: &std::ffi::CStr = c"background_thread:true,max_background_threads:1";

#[cfg(target_env = "musl")]
#[export_name = "_rjem_malloc_conf"]
#[used]
static JEMALLOC_CONF: Option<&'static libc::c_char> =
    // SAFETY: a C string constant lives for the whole program.
    Some(unsafe { &*JEMALLOC_OPTIONS.as_ptr() });

/// Produces the effective configuration as JSON, on demand.
pub type ConfigDump = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What an admin listener answers from. Readiness is always served; metrics
/// and the config dump only where given, so a listener reachable from the
/// network can leave the config dump out.
#[derive(Clone)]
pub struct AdminState {
    pub readiness: Readiness,
    pub registry: Option<Arc<Registry>>,
    pub config_dump: Option<ConfigDump>,
}

/// Connections an admin port holds waiting to be accepted.
const ADMIN_BACKLOG: i32 = 128;

/// An admin HTTP listener, bound and ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    state: AdminState,
}

impl AdminServer {
    /// Binds `addr` with SO_REUSEPORT: a new agent binds its admin ports
    /// beside the old one it takes over from (on the node's network, at an
    /// upgrade), and the kernel sends each probe to either until the old
    /// one closes its ports.
    pub async fn bind(addr: SocketAddr, state: AdminState) -> Result<Self, AdminError> {
        let listener = listen::tcp_listener(addr, ADMIN_BACKLOG, true)
            .and_then(TcpListener::from_std)
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut acceptor = Acceptor::new(self.listener, "admin", MAX_ADMIN_CONNECTIONS)
            .per_source(MAX_ADMIN_CONNECTIONS_PER_SOURCE)
            .reporting_to(self.state.readiness.clone());
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => return,
                accepted = acceptor.accept() => accepted,
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let served = serve_connection(accepted.stream, state);
                if let Some(Err(error)) = accept::at_most(ADMIN_CONNECTION_LIFETIME, served).await {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
                drop(accepted.place);
            });
        }
    }
}

/// One admin connection: HTTP/1 alone, as probes and Prometheus speak it;
/// its header timeout also closes a connection that sends nothing.
fn serve_connection<I>(io: I, state: AdminState) -> impl Future<Output = hyper::Result<()>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&req, &state)) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
}

/// Binds a Unix socket at `path`, replacing one a previous process left
/// (a restarting process takes the path over from the one it replaces).
pub fn bind_unix_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    tokio::net::UnixListener::bind(path)
}

fn respond(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let not_found = || (StatusCode::NOT_FOUND, "not found\n".to_string());
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, READY_PATH) if state.readiness.is_ready() => {
            (StatusCode::OK, "ready\n".into())
        }
        (&Method::GET, READY_PATH) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        (&Method::GET, LIVE_PATH) if state.readiness.is_live() => (StatusCode::OK, "live\n".into()),
        (&Method::GET, LIVE_PATH) => (StatusCode::SERVICE_UNAVAILABLE, "wedged\n".into()),
        (&Method::GET, METRICS_PATH) => match &state.registry {
            Some(registry) => {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, registry) {
                    Ok(()) => (StatusCode::OK, text),
                    Err(_) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n".into(),
                    ),
                }
            }
            None => not_found(),
        },
        // The log filter, changed on the loopback admin port only (as
        // Envoy's `/logging`): `POST /logging?level=debug`.
        (&Method::POST, LOGGING_PATH) if state.config_dump.is_some() => {
            let level = req
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    (key == "level").then_some(value)
                });
            match level.map(logging::set_log_filter) {
                Some(Ok(())) => (
                    StatusCode::OK,
                    format!("log filter: {}\n", level.unwrap_or_default()),
                ),
                Some(Err(why)) => (StatusCode::BAD_REQUEST, format!("{why}\n")),
                None => (
                    StatusCode::BAD_REQUEST,
                    "give ?level=FILTER (RUST_LOG's syntax)\n".into(),
                ),
            }
        }
        (&Method::GET, CONFIG_DUMP_PATH) => match &state.config_dump {
            Some(dump) => {
                let mut text = serde_json::to_string_pretty(&dump()).unwrap_or_default();
                text.push('\n');
                (StatusCode::OK, text)
            }
            None => not_found(),
        },
        _ => not_found(),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Where a proxy serves its admin endpoints, on Istio's ports.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct AdminAddrs {
    /// Where the admin endpoints (config dump, metrics, readiness) are
    /// served: loopback only, as Istio's proxies do.
    #[arg(long = "admin-addr", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// Where the readiness probe is served (Istio's port); by default on
    /// every address, of both families.
    #[arg(long = "readiness-addr", default_value = "[::]:15021")]
    pub readiness: SocketAddr,

    /// Where Prometheus metrics are served (Istio's port); by default on
    /// every address, of both families.
    #[arg(long = "metrics-addr", default_value = "[::]:15020")]
    pub metrics: SocketAddr,

    /// A Unix socket where readiness and liveness are answered for this
    /// process alone (`BINARY probe SOCKET ready|live`, the kubelet's exec
    /// probes): for a proxy on the node's network, whose TCP ports the one
    /// it replaces shares during an upgrade.
    #[arg(long = "probe-socket")]
    pub probe_socket: Option<std::path::PathBuf>,
}

/// A proxy's three admin listeners, serving until [`AdminEndpoints::stop`].
pub struct AdminEndpoints {
    stop: tokio::sync::watch::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl AdminEndpoints {
    /// Binds and serves all three. Readiness for the kubelet and metrics
    /// for Prometheus are reachable from the network; the config dump only
    /// on the admin (loopback) address.
    pub async fn start(
        addrs: AdminAddrs,
        readiness: Readiness,
        registry: Arc<Registry>,
        config_dump: ConfigDump,
    ) -> Result<Self, AdminError> {
        let listeners = [
            (addrs.admin, Some(registry.clone()), Some(config_dump)),
            (addrs.metrics, Some(registry), None),
            (addrs.readiness, None, None),
        ];
        let (stop, stopping) = tokio::sync::watch::channel(());
        let mut tasks = Vec::new();
        if let Some(path) = &addrs.probe_socket {
            let listener = bind_unix_socket(path).map_err(|source| AdminError::ProbeSocket {
                path: path.clone(),
                source,
            })?;
            let mut stopping = stopping.clone();
            tasks.push(tokio::spawn(probe::serve(
                listener,
                readiness.clone(),
                async move {
                    let _ = stopping.changed().await;
                },
            )));
        }
        for (addr, registry, config_dump) in listeners {
            let state = AdminState {
                readiness: readiness.clone(),
                registry,
                config_dump,
            };
            let server = AdminServer::bind(addr, state).await?;
            let mut stopping = stopping.clone();
            tasks.push(tokio::spawn(server.serve(async move {
                let _ = stopping.changed().await;
            })));
        }
        Ok(Self { stop, tasks })
    }

    /// Closes the listeners.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The signals that start a graceful stop: SIGTERM (the kubelet's) and
/// SIGINT (Ctrl-C). Installed at start-up, so one that arrives early is kept.
pub struct StopSignal {
    term: Signal,
    int: Signal,
}

impl StopSignal {
    pub fn install() -> Result<Self, AdminError> {
        let install = |kind: SignalKind, name| {
            signal(kind).map_err(|source| AdminError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Self {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Completes when the first of them arrives.
    pub async fn received(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received, stopping"),
            _ = self.int.recv() => tracing::info!("SIGINT received, stopping"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The status line, and the body.
    async fn get(addr: SocketAddr, path: &str) -> (String, String) {
        ask(addr, "GET", path).await
    }

    async fn ask(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
        (
            head.lines().next().unwrap_or_default().to_string(),
            body.to_string(),
        )
    }

    #[tokio::test]
    async fn the_log_filter_changes_at_runtime_on_the_loopback_admin_port_only() {
        // The only test of this binary that installs the global subscriber.
        init_logging(AccessLog::Immediate, LogFormat::Json);
        let serve = |config_dump: Option<ConfigDump>| async move {
            let state = AdminState {
                readiness: Readiness::default(),
                registry: None,
                config_dump,
            };
            let server = AdminServer::bind(([127, 0, 0, 1], 0).into(), state)
                .await
                .expect("bind");
            let addr = server.local_addr().expect("local address");
            tokio::spawn(server.serve(std::future::pending()));
            addr
        };
        let admin = serve(Some(Arc::new(|| serde_json::json!({})))).await;
        let network = serve(None).await;
        let (status, body) = ask(admin, "POST", "/logging?level=debug").await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert!(tracing::enabled!(tracing::Level::DEBUG));
        let (status, body) = ask(admin, "POST", "/logging?level=warn,ambit_admin=trace").await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert!(!tracing::enabled!(target: "elsewhere", tracing::Level::INFO));
        assert!(tracing::enabled!(tracing::Level::TRACE));
        let (status, body) = ask(admin, "POST", "/logging?level=a=b=c").await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{body}");
        assert_eq!(
            ask(admin, "POST", "/logging").await.0,
            "HTTP/1.1 400 Bad Request"
        );
        // The network-facing listeners do not take it.
        assert_eq!(
            ask(network, "POST", "/logging?level=trace").await.0,
            "HTTP/1.1 404 Not Found"
        );
    }

    #[test]
    fn one_worker_runs_on_a_single_threaded_runtime() {
        let flavor = |threads| runtime(threads).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), tokio::runtime::RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(3), tokio::runtime::RuntimeFlavor::MultiThread);
    }

    #[tokio::test]
    async fn readiness_follows_the_flag_and_other_paths_are_not_found() {
        let readiness = Readiness::default();
        let mut registry = Registry::default();
        let requests = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("demo_requests", "Requests", requests.clone());
        requests.inc_by(3);
        let state = AdminState {
            readiness: readiness.clone(),
            registry: Some(Arc::new(registry)),
            config_dump: Some(Arc::new(|| serde_json::json!({"pods": ["default/web"]}))),
        };
        let server = AdminServer::bind(([127, 0, 0, 1], 0).into(), state)
            .await
            .expect("bind");
        let addr = server.local_addr().expect("local address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));

        assert_eq!(
            get(addr, READY_PATH).await.0,
            "HTTP/1.1 503 Service Unavailable"
        );
        readiness.set_ready(true);
        assert_eq!(get(addr, READY_PATH).await.0, "HTTP/1.1 200 OK");
        assert_eq!(get(addr, "/elsewhere").await.0, "HTTP/1.1 404 Not Found");
        let (status, metrics) = get(addr, METRICS_PATH).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(metrics.contains("demo_requests_total 3"), "{metrics}");
        let (status, dump) = get(addr, CONFIG_DUMP_PATH).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&dump).ok(),
            Some(serde_json::json!({"pods": ["default/web"]}))
        );

        // A listener given no config dump does not serve one.
        let bare = AdminServer::bind(
            ([127, 0, 0, 1], 0).into(),
            AdminState {
                readiness: readiness.clone(),
                registry: None,
                config_dump: None,
            },
        )
        .await
        .expect("bind");
        let bare_addr = bare.local_addr().expect("local address");
        tokio::spawn(bare.serve(std::future::pending()));
        assert_eq!(
            get(bare_addr, CONFIG_DUMP_PATH).await.0,
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            get(bare_addr, METRICS_PATH).await.0,
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(get(bare_addr, READY_PATH).await.0, "HTTP/1.1 200 OK");

        // Live while nothing watches; with a watchdog, while it beats.
        assert_eq!(get(addr, LIVE_PATH).await.0, "HTTP/1.1 200 OK");
        readiness.beat();
        assert_eq!(get(addr, LIVE_PATH).await.0, "HTTP/1.1 200 OK");
        let long_ago = std::time::Instant::now() - LIVENESS_WINDOW * 2;
        let wedged = Readiness(Arc::new(Health {
            ready: AtomicBool::new(true),
            started: long_ago,
            last_beat: AtomicU64::new(1),
            last_accept_failure: AtomicU64::new(0),
        }));
        assert!(!wedged.is_live() && !wedged.is_ready());
        wedged.beat();
        assert!(wedged.is_live() && wedged.is_ready());

        stop.send(()).expect("server still running");
        serving.await.expect("server task");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after stop"
        );
    }
}
