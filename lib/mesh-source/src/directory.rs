//! The standalone source: a directory of Kubernetes manifests
//! (`--config-dir`), applied again whenever a file in it is added, changed
//! or removed. A removed file or document removes its objects.
//!
//! Changes are noticed through inotify, so they apply within milliseconds,
//! and only the files that changed are parsed again. What is read never
//! loses what was in force by accident: a file still open for writing is
//! read once it is closed; a file that cannot be read (not a regular file,
//! too large, not UTF-8) keeps the objects it held, and so does a file
//! with a document that cannot be read, until it reads whole again; each
//! such file is reported on its own while the others apply.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ambit_config::document::{
    self, check_references, parse_stream, rejections, ObjectRef, Problem, Resource, Severity,
};
use ambit_config::model::Mesh;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;

/// A manifest directory, what was last read from each of its files, and
/// what the model was last given, so a change applies only what differs.
#[derive(Debug)]
pub struct Directory {
    dir: PathBuf,
    files: BTreeMap<PathBuf, File>,
    /// Each object as the last file that defines it has it.
    applied: BTreeMap<ObjectRef, Applied>,
    /// Warnings across files already logged, so each is logged once.
    warned: BTreeSet<String>,
    /// Files that cannot be read now, and why (logged when it changes).
    unreadable: BTreeMap<PathBuf, String>,
    /// Files open for writing (created or changed, not yet closed), since
    /// when: read once closed, or after [`WRITE_PATIENCE`].
    writing: BTreeMap<PathBuf, Instant>,
}

/// The most a manifest file may hold.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// How long a file may stay open for writing before it is read anyway (a
/// writer that keeps it open).
const WRITE_PATIENCE: Duration = Duration::from_secs(10);

/// What inotify said of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    pub path: PathBuf,
    /// `Some(true)` once it is created or written to, `Some(false)` once it
    /// is closed after writing, renamed or removed; `None` otherwise.
    pub writing: Option<bool>,
}

#[derive(Debug, Clone)]
struct File {
    stamp: Stamp,
    /// What the file defines; within a file, the last definition wins.
    objects: Arc<BTreeMap<ObjectRef, Applied>>,
}

#[derive(Debug, Clone)]
enum Applied {
    Object(Arc<Resource>),
    Rejected(Vec<String>),
}

impl PartialEq for Applied {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // Objects of files that did not change are the same allocation.
            (Self::Object(a), Self::Object(b)) => Arc::ptr_eq(a, b) || a == b,
            (Self::Rejected(a), Self::Rejected(b)) => a == b,
            _ => false,
        }
    }
}

/// What tells a file's content changed without reading it: a rewrite in
/// place changes its size or time, a rename over it (editors, ConfigMap
/// updates) its inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct ReadError {
    path: String,
    source: std::io::Error,
}

impl ReadError {
    fn new(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self {
            path: path.display().to_string(),
            source,
        }
    }
}

impl Directory {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
            applied: BTreeMap::new(),
            warned: BTreeSet::new(),
            unreadable: BTreeMap::new(),
            writing: BTreeMap::new(),
        }
    }

    /// Takes note of an event: whether the file is being written.
    pub fn note(&mut self, event: FileEvent) {
        match event.writing {
            Some(true) => {
                self.writing.entry(event.path).or_insert_with(Instant::now);
            }
            Some(false) => {
                self.writing.remove(&event.path);
            }
            None => {}
        }
    }

    fn being_written(&self, path: &Path) -> bool {
        self.writing
            .get(path)
            .is_some_and(|since| since.elapsed() < WRITE_PATIENCE)
    }

    /// Logs why `path` cannot be read, when the reason is new.
    fn cannot_read(&mut self, path: &Path, reason: String, keeps: bool) {
        if self.unreadable.get(path) != Some(&reason) {
            let kept = match keeps {
                true => "; the objects it held stay in force",
                false => "",
            };
            tracing::error!(file = %path.display(), "cannot read the file: {reason}{kept}");
            self.unreadable.insert(path.to_path_buf(), reason);
        }
    }

    /// Reads the manifests (`.yaml`, `.yml`, `.json`) added or changed since
    /// the last call and, when anything changed, applies the whole directory
    /// to `mesh`; returns whether it did. Problems are logged, naming the
    /// file, object and field; an object with an error is rejected on its
    /// own (see [`Mesh::reject`]) and everything else applies. A file being
    /// written or that cannot be read keeps what it held (see the module's
    /// documentation). A directory that cannot be listed fails the call and
    /// changes nothing.
    pub fn load(&mut self, mesh: &mut Mesh) -> Result<bool, ReadError> {
        let paths = document::manifest_files(&self.dir).map_err(ReadError::new(&self.dir))?;
        let mut files = BTreeMap::new();
        // Files added, changed or removed since the last read.
        let listed: BTreeSet<&PathBuf> = paths.iter().collect();
        let mut changed: BTreeSet<PathBuf> = self
            .files
            .keys()
            .filter(|path| !listed.contains(path))
            .cloned()
            .collect();
        self.unreadable.retain(|path, _| listed.contains(path));
        for path in paths.iter().cloned() {
            let previous = self.files.get(&path).cloned();
            if self.being_written(&path) {
                files.extend(previous.map(|file| (path, file)));
                continue;
            }
            match read_manifest(&path, previous.as_ref().map(|file| &file.stamp)) {
                Ok(None) => {
                    self.unreadable.remove(&path);
                    files.extend(previous.map(|file| (path, file)));
                }
                Ok(Some((stamp, text))) => {
                    self.unreadable.remove(&path);
                    changed.insert(path.clone());
                    let file = read_file(&path, stamp, &text, previous.as_ref());
                    files.insert(path, file);
                }
                Err(reason) => {
                    self.cannot_read(&path, reason, previous.is_some());
                    files.extend(previous.map(|file| (path, file)));
                }
            }
        }
        if changed.is_empty() {
            return Ok(false);
        }
        let old_files = std::mem::replace(&mut self.files, files);
        // Only objects of the changed files can differ; each goes to what
        // the last file (by path) that defines it says.
        let affected: BTreeSet<&ObjectRef> = changed
            .iter()
            .flat_map(|path| [old_files.get(path), self.files.get(path)])
            .flatten()
            .flat_map(|file| file.objects.keys())
            .collect();
        for object in affected {
            let now = self
                .files
                .values()
                .rev()
                .find_map(|file| file.objects.get(object));
            if self.applied.get(object) == now {
                continue;
            }
            match now {
                Some(Applied::Object(resource)) => mesh.apply(Resource::clone(resource)),
                Some(Applied::Rejected(problems)) => mesh.reject(object, problems.clone()),
                None => {
                    mesh.delete(object);
                }
            }
            match now {
                Some(now) => self.applied.insert(object.clone(), now.clone()),
                None => self.applied.remove(object),
            };
        }
        self.warn_across();
        Ok(true)
    }

    /// Logs the problems between objects of different files (routes to
    /// subsets no DestinationRule defines) that were not logged already.
    fn warn_across(&mut self) {
        let resources = self.applied.values().filter_map(|now| match now {
            Applied::Object(resource) => Some(&**resource),
            Applied::Rejected(_) => None,
        });
        let across = check_references(resources);
        let warned = across.iter().map(ToString::to_string).collect();
        for problem in &across {
            if !self.warned.contains(&problem.to_string()) {
                log(None, problem);
            }
        }
        self.warned = warned;
    }
}

/// A manifest file's stamp and text, if it is a regular file (a FIFO or a
/// device is refused without blocking), of at most [`MAX_FILE_BYTES`], in
/// UTF-8; else why not. `None` when its stamp is still `known`: an
/// unchanged file is not read again.
fn read_manifest(path: &Path, known: Option<&Stamp>) -> Result<Option<(Stamp, String)>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| error.to_string())?;
    let metadata = file.metadata().map_err(|error| error.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    let stamp = Stamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        inode: metadata.ino(),
    };
    if known == Some(&stamp) {
        return Ok(None);
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, over the {MAX_FILE_BYTES} read",
            metadata.len()
        ));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| error.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("grew over the {MAX_FILE_BYTES} bytes read"));
    }
    let text = String::from_utf8(bytes).map_err(|error| format!("not UTF-8: {error}"))?;
    Ok(Some((stamp, text)))
}

/// What one file defines, its problems logged with its name. Where a
/// document could not be read even to name its object, the objects the
/// file held before (`previous`) that it no longer defines stay.
fn read_file(path: &Path, stamp: Stamp, text: &str, previous: Option<&File>) -> File {
    let parsed = parse_stream(text);
    for problem in &parsed.problems {
        log(Some(path), problem);
    }
    let mut objects = BTreeMap::new();
    for resource in parsed.resources {
        objects.insert(resource.describe().1, Applied::Object(Arc::new(resource)));
    }
    for (object, problems) in rejections(&parsed.problems) {
        objects.insert(object, Applied::Rejected(problems));
    }
    let unnamed = parsed
        .problems
        .iter()
        .any(|problem| problem.severity == Severity::Error && problem.object.is_none());
    if let (true, Some(previous)) = (unnamed, previous) {
        tracing::warn!(file = %path.display(), "a document cannot be read; the objects the file held stay in force until it reads whole");
        for (object, applied) in previous.objects.iter() {
            objects
                .entry(object.clone())
                .or_insert_with(|| applied.clone());
        }
    }
    File {
        stamp,
        objects: Arc::new(objects),
    }
}

fn log(file: Option<&Path>, problem: &Problem) {
    let file = file
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default();
    match problem.severity {
        Severity::Error => tracing::error!("{file}{problem}"),
        Severity::Warning => tracing::warn!("{file}{problem}"),
    }
}

/// How long changes may keep coming before the directory is read: an
/// editor's or `kubectl cp`'s burst of events is applied once.
const SETTLE: Duration = Duration::from_millis(5);
/// How often the directory is read anyway, in case an event was lost (a
/// full inotify queue, a file system that sends none).
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// Watches the directory and calls `changed` with the model each time a
/// file in it is added, changed or removed. `events` must have been set up
/// before the directory was first read, so no change falls in between.
pub async fn watch(
    mut directory: Directory,
    mut events: Option<Events>,
    mut mesh: Mesh,
    mut changed: impl FnMut(&Mesh),
) {
    loop {
        match &mut events {
            Some(events) => {
                let mut noted = tokio::select! {
                    noted = events.next() => noted,
                    () = tokio::time::sleep(RESCAN_INTERVAL) => Vec::new(),
                };
                tokio::time::sleep(SETTLE).await;
                noted.extend(events.pending());
                for event in noted {
                    directory.note(event);
                }
                // Before reading: a file written into a new subdirectory
                // meanwhile is either read now or reported later.
                events.watch_tree(&directory.dir);
            }
            None => tokio::time::sleep(RESCAN_INTERVAL).await,
        }
        // Read into a copy: a directory that cannot be read leaves the
        // mesh in force untouched.
        let mut next = mesh.clone();
        match directory.load(&mut next) {
            Ok(true) => {
                mesh = next;
                changed(&mesh);
            }
            Ok(false) => {}
            Err(error) => {
                tracing::error!(%error, "config change ignored; the previous config stays in force")
            }
        }
    }
}

/// Whether an event about `name` can change what is read: hidden files
/// (an editor's or a writer's temporary file) cannot, except the `..data`
/// link a ConfigMap mount swaps to publish an update.
fn relevant(name: Option<&std::ffi::OsStr>) -> bool {
    name.and_then(|n| n.to_str())
        .is_none_or(|n| !n.starts_with('.') || n == "..data")
}

/// inotify on the directory and its subdirectories.
pub struct Events {
    inotify: AsyncFd<InotifyFd>,
    /// Each watched directory by its watch.
    watched: BTreeMap<WatchDescriptor, PathBuf>,
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Events {
    /// Events of `dir` and its subdirectories from now on; `None`, logged
    /// as `what`, where inotify is not available (the caller then reads
    /// the directory every few seconds).
    pub fn watching(dir: &Path, what: &str) -> Option<Self> {
        match Self::new() {
            Ok(mut events) => {
                events.watch_tree(dir);
                Some(events)
            }
            Err(error) => {
                tracing::warn!(%error, "inotify unavailable; {what} is only read every few seconds");
                None
            }
        }
    }

    /// Whether any directory is watched (one that does not exist yet is
    /// not, until [`Events::watch_tree`] finds it).
    pub fn is_watching(&self) -> bool {
        !self.watched.is_empty()
    }

    fn new() -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: the `AsyncFd` owns the inotify instance, whose descriptor
        // stays open and the same until the `AsyncFd` is dropped.
        let inotify =
            unsafe { AsyncFd::register(InotifyFd(inotify)) }.map_err(std::io::Error::from)?;
        Ok(Self {
            inotify,
            watched: BTreeMap::new(),
        })
    }

    fn instance(&self) -> &Inotify {
        &self.inotify.get_ref().0
    }

    /// Watches `dir` and every visible directory under it not yet watched.
    pub fn watch_tree(&mut self, dir: &Path) {
        let flags = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE_SELF;
        let mut pending = vec![dir.to_path_buf()];
        // Each directory once, however many links lead to it.
        let mut seen = BTreeSet::new();
        while let Some(dir) = pending.pop() {
            let Ok(metadata) = std::fs::metadata(&dir) else {
                continue;
            };
            if !seen.insert((metadata.dev(), metadata.ino())) {
                continue;
            }
            if !self.watched.values().any(|watched| *watched == dir) {
                match self.instance().add_watch(&dir, flags) {
                    Ok(watch) => {
                        self.watched.insert(watch, dir.clone());
                    }
                    Err(error) => {
                        tracing::warn!(dir = %dir.display(), %error, "cannot watch for changes")
                    }
                }
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            pending.extend(entries.flatten().map(|e| e.path()).filter(|path| {
                path.is_dir()
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| !n.starts_with('.'))
            }));
        }
        // A directory that went away loses its watch with it.
        self.watched.retain(|_, dir| dir.is_dir());
    }

    /// Completes with the events waiting, once one of them is relevant.
    pub async fn next(&mut self) -> Vec<FileEvent> {
        loop {
            let Ok(mut guard) = self.inotify.readable().await else {
                return std::future::pending().await;
            };
            let events = guard.get_inner().0.read_events().unwrap_or_default();
            if events.iter().any(|event| relevant(event.name.as_deref())) {
                return self.file_events(events);
            }
            if !events.is_empty() {
                continue;
            }
            guard.clear_ready();
        }
    }

    /// The events that came in meanwhile: one read covers them all.
    fn pending(&mut self) -> Vec<FileEvent> {
        let mut noted = Vec::new();
        while let Ok(events) = self.instance().read_events() {
            if events.is_empty() {
                break;
            }
            noted.extend(self.file_events(events));
        }
        noted
    }

    fn file_events(&self, events: Vec<InotifyEvent>) -> Vec<FileEvent> {
        events
            .into_iter()
            .filter(|event| !event.mask.contains(AddWatchFlags::IN_ISDIR))
            .filter_map(|event| {
                let path = self.watched.get(&event.wd)?.join(event.name?);
                let mask = event.mask;
                let writing =
                    if mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MODIFY) {
                        Some(true)
                    } else if mask.intersects(
                        AddWatchFlags::IN_CLOSE_WRITE
                            | AddWatchFlags::IN_MOVED_TO
                            | AddWatchFlags::IN_MOVED_FROM
                            | AddWatchFlags::IN_DELETE,
                    ) {
                        Some(false)
                    } else {
                        None
                    };
                Some(FileEvent { path, writing })
            })
            .collect()
    }
}
