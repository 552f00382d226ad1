//! What the plugin does with a pod while the node agent cannot be reached
//! (stopped, restarting, not yet started after a reboot). A pod that is to
//! be in the mesh must not start uncaptured: its sandbox fails with a
//! retryable error and the runtime tries again. Every other pod starts at
//! once, so a node whose agent is down still runs kube-system and
//! everything outside the mesh.
//!
//! The agent writes what it last knew of enrollment beside its socket
//! ([`POLICY_FILE`]); the plugin judges a pod by it. Without that record
//! (a node just rebooted: the agent's directory is on tmpfs) only the
//! exempt namespaces start. A pod started this way is handed to the agent
//! in [`PASSED_DIR`], which takes it as an ADD when it comes up: a pod that
//! the mesh wants after all is enrolled then. Pure, but for the two files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocol::{PodRef, PodSandbox};

/// The agent's record of enrollment, beside its socket.
pub const POLICY_FILE: &str = "enrollment.json";
/// Pods started while the agent was unreachable, one file each, beside
/// its socket.
pub const PASSED_DIR: &str = "passed";
/// Namespaces whose pods always start, whatever the record says.
pub const ALWAYS_EXEMPT: &str = "kube-system";

/// Which pods the mesh enrolls, as the agent last knew it: the namespaces
/// labelled into the mesh, and the pods whose own label decides.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrollmentPolicy {
    pub namespaces: BTreeSet<String>,
    /// `namespace/name` to whether the pod's own label enrolls it.
    pub pods: BTreeMap<String, bool>,
}

impl EnrollmentPolicy {
    /// Whether `pod` is to be in the mesh: its own label, else its
    /// namespace's.
    pub fn enrolls(&self, pod: &PodRef) -> bool {
        let key = format!("{}/{}", pod.namespace, pod.name);
        match self.pods.get(&key) {
            Some(own) => *own,
            None => self.namespaces.contains(&pod.namespace),
        }
    }
}

/// The verdict on a pod while the agent is unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It starts now (outside the mesh until the agent says otherwise).
    Start,
    /// Its sandbox fails, for the runtime to try again: why.
    Retry(String),
}

/// How `pod` is treated with the agent unreachable, by the agent's last
/// record (`None`: there is none) and the namespaces exempt from the mesh.
pub fn judge(policy: Option<&EnrollmentPolicy>, exempt: &[String], pod: &PodRef) -> Verdict {
    if pod.namespace == ALWAYS_EXEMPT || exempt.contains(&pod.namespace) {
        return Verdict::Start;
    }
    match policy {
        None => Verdict::Retry(
            "the node agent has not yet recorded which pods are enrolled".to_string(),
        ),
        Some(policy) if policy.enrolls(pod) => {
            Verdict::Retry(format!("pod {pod} is enrolled in the mesh"))
        }
        Some(_) => Verdict::Start,
    }
}

/// Reads the agent's record in `dir`; `None` when there is none or it
/// cannot be read (the agent writes it whole, by rename).
pub fn read_policy(dir: &Path) -> Option<EnrollmentPolicy> {
    let bytes = std::fs::read(dir.join(POLICY_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `policy` into `dir` atomically (a whole file, by rename).
pub fn write_policy(dir: &Path, policy: &EnrollmentPolicy) -> std::io::Result<()> {
    write_atomically(&dir.join(POLICY_FILE), &serde_json::to_vec(policy)?)
}

/// Hands `sandbox`, started while the agent was unreachable, to the agent.
pub fn hand_over(dir: &Path, sandbox: &PodSandbox) -> std::io::Result<()> {
    let passed = dir.join(PASSED_DIR);
    std::fs::create_dir_all(&passed)?;
    // The UID names one pod; its latest sandbox wins.
    let file = passed.join(format!("{}.json", sandbox.pod.uid.replace('/', "_")));
    write_atomically(&file, &serde_json::to_vec(sandbox)?)
}

/// The sandboxes handed over in `dir`, removed as they are taken.
pub fn take_handed_over(dir: &Path) -> Vec<PodSandbox> {
    let Ok(entries) = std::fs::read_dir(dir.join(PASSED_DIR)) else {
        return Vec::new();
    };
    let mut taken = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            if let Some(sandbox) = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            {
                taken.push(sandbox);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    taken
}

/// Writes `bytes` to `path` whole: a temporary file beside it, then a
/// rename, so a reader sees the old file or the new, never part of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let temporary = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, name: &str) -> PodRef {
        PodRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("{namespace}-{name}"),
        }
    }

    #[test]
    fn only_pods_the_mesh_wants_wait_for_the_agent() {
        let policy = EnrollmentPolicy {
            namespaces: ["shop".to_string()].into(),
            pods: [
                ("shop/opted-out".to_string(), false),
                ("plain/opted-in".to_string(), true),
            ]
            .into(),
        };
        let exempt = ["ambit-system".to_string()];
        let verdict = |namespace, name| judge(Some(&policy), &exempt, &pod(namespace, name));
        assert!(matches!(verdict("shop", "web"), Verdict::Retry(_)));
        assert!(matches!(verdict("plain", "opted-in"), Verdict::Retry(_)));
        assert_eq!(verdict("shop", "opted-out"), Verdict::Start);
        assert_eq!(verdict("plain", "web"), Verdict::Start);
        // Without a record, only the exempt namespaces start.
        let unknown = |namespace| judge(None, &exempt, &pod(namespace, "x"));
        assert_eq!(unknown("kube-system"), Verdict::Start);
        assert_eq!(unknown("ambit-system"), Verdict::Start);
        assert!(matches!(unknown("plain"), Verdict::Retry(_)));
    }

    #[test]
    fn records_and_hand_overs_round_trip_through_their_files() {
        let dir = std::env::temp_dir().join(format!("ambit-cni-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_policy(&dir), None);
        let policy = EnrollmentPolicy {
            namespaces: ["shop".to_string()].into(),
            pods: BTreeMap::new(),
        };
        write_policy(&dir, &policy).unwrap();
        assert_eq!(read_policy(&dir), Some(policy));
        let sandbox = PodSandbox {
            pod: pod("plain", "web"),
            container_id: "c1".into(),
            netns: "/proc/1/ns/net".into(),
            ips: vec![],
        };
        hand_over(&dir, &sandbox).unwrap();
        assert_eq!(take_handed_over(&dir), [sandbox]);
        assert!(take_handed_over(&dir).is_empty(), "taken once");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
