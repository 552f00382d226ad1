//! The workload certificates this node needs: one per service account with
//! an enrolled pod here. Keys are made here and never leave; the CA
//! (`ambit-ca`) certifies them. Each certificate is renewed at about half
//! of its remaining life (jittered, so a node's renewals do not reach the
//! CA together); a failed request is retried with backoff while the
//! certificate in hand stays in use as long as it is valid.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::ca_client::CaClient;
use ambit_config::model::{Key, Mesh, Workload};
use ambit_identity::{Identity, WorkloadCertificate};
use serde::Serialize;
use tokio::sync::Notify;

/// The identity a pod runs as: its service account in its namespace.
pub fn workload_identity(trust_domain: &str, key: &Key, workload: &Workload) -> Identity {
    Identity::new(trust_domain, &key.namespace, &workload.service_account)
}

/// The identity of the pod of the mesh at `ip`: only an enrolled pod with
/// an address of its own has an agent answering HBONE for it.
pub fn meshed_identity_at(trust_domain: &str, mesh: &Mesh, ip: IpAddr) -> Option<Identity> {
    let (key, workload) = mesh.workload_by_ip(ip)?;
    let meshed = !workload.host_network && mesh.is_enrolled(&key.namespace, &key.name);
    meshed.then(|| workload_identity(trust_domain, key, workload))
}

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Renewals move by up to this share of the time to renewal, either way.
const JITTER: f64 = 0.1;

pub struct Certificates {
    client: CaClient,
    trust_domain: String,
    state: Mutex<State>,
    wake: Notify,
    /// Told each time a certificate is obtained.
    issued: Notify,
}

#[derive(Default)]
struct State {
    wanted: BTreeSet<Identity>,
    held: BTreeMap<Identity, Held>,
}

#[derive(Clone)]
struct Held {
    certificate: Arc<WorkloadCertificate>,
    renew_at: SystemTime,
}

/// A held certificate, as the config dump shows it.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct HeldStatus {
    pub identity: String,
    /// Seconds since the Unix epoch.
    pub not_after: u64,
    pub renew_at: u64,
}

impl Certificates {
    pub fn new(client: CaClient, trust_domain: String) -> Self {
        Self {
            client,
            trust_domain,
            state: Mutex::default(),
            wake: Notify::new(),
            issued: Notify::new(),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The identity the pod `namespace/name` runs as: its service account.
    pub fn identity_of(&self, mesh: &Mesh, namespace: &str, name: &str) -> Option<Identity> {
        let (key, workload) = mesh.workloads.get_key_value(&Key::new(namespace, name))?;
        Some(workload_identity(&self.trust_domain, key, workload))
    }

    /// The identities needed now. Certificates no longer needed are dropped.
    pub fn want(&self, wanted: BTreeSet<Identity>) {
        let mut state = self.lock();
        if state.wanted != wanted {
            state.held.retain(|identity, _| wanted.contains(identity));
            state.wanted = wanted;
            self.wake.notify_one();
        }
    }

    /// The certificate for `identity`, while it is valid.
    pub fn get(&self, identity: &Identity) -> Option<Arc<WorkloadCertificate>> {
        let held = self.lock().held.get(identity)?.certificate.clone();
        (held.not_after > SystemTime::now()).then_some(held)
    }

    /// The certificate for `identity`, waiting up to `within` for it: a
    /// pod's first connections may come before its first certificate.
    pub async fn obtain(
        &self,
        identity: &Identity,
        within: Duration,
    ) -> Option<Arc<WorkloadCertificate>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let issued = self.issued.notified();
            tokio::pin!(issued);
            issued.as_mut().enable();
            if let Some(certificate) = self.get(identity) {
                return Some(certificate);
            }
            if tokio::time::timeout_at(deadline, issued).await.is_err() {
                return None;
            }
        }
    }

    pub fn describe(&self) -> Vec<HeldStatus> {
        let seconds = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
        };
        self.lock()
            .held
            .iter()
            .map(|(identity, held)| HeldStatus {
                identity: identity.to_string(),
                not_after: seconds(held.certificate.not_after),
                renew_at: seconds(held.renew_at),
            })
            .collect()
    }

    /// Obtains and renews certificates for as long as the agent runs.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let now = SystemTime::now();
            let due = {
                let state = self.lock();
                due(&state.wanted, &state.held, now)
            };
            let mut failed = false;
            for identity in due {
                match self.client.certify(&identity).await {
                    Ok(certified) => {
                        let certificate = certified.certificate;
                        let renew_at =
                            renewal_time(SystemTime::now(), certificate.not_after, jitter());
                        tracing::info!(%identity, ?renew_at, "workload certificate obtained");
                        self.hold(identity, certificate, renew_at);
                    }
                    Err(error) => {
                        tracing::warn!(%identity, %error, "workload certificate request failed; retrying in {backoff:?}");
                        failed = true;
                    }
                }
            }
            let wait = if failed {
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            } else {
                backoff = MIN_BACKOFF;
                let next = self.lock().held.values().map(|held| held.renew_at).min();
                next.and_then(|at| at.duration_since(SystemTime::now()).ok())
                    .unwrap_or(MAX_BACKOFF)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Keeps `certificate` for `identity`, if it is still wanted, and wakes
    /// the connections waiting for it.
    fn hold(&self, identity: Identity, certificate: WorkloadCertificate, renew_at: SystemTime) {
        let mut state = self.lock();
        if state.wanted.contains(&identity) {
            let certificate = Arc::new(certificate);
            state.held.insert(
                identity,
                Held {
                    certificate,
                    renew_at,
                },
            );
        }
        drop(state);
        self.issued.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The identities wanted that have no certificate, or whose renewal time
/// has come.
fn due(
    wanted: &BTreeSet<Identity>,
    held: &BTreeMap<Identity, Held>,
    now: SystemTime,
) -> Vec<Identity> {
    wanted
        .iter()
        .filter(|identity| held.get(*identity).is_none_or(|held| held.renew_at <= now))
        .cloned()
        .collect()
}

/// When to renew a certificate received at `received` and valid until
/// `not_after`: half way through what remains, moved by `jitter` (in
/// -1..=1) times [`JITTER`] of that.
fn renewal_time(received: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let half = not_after.duration_since(received).unwrap_or_default() / 2;
    let shift = half.mul_f64(JITTER * jitter.abs().min(1.0));
    if jitter < 0.0 {
        received + half - shift
    } else {
        received + half + shift
    }
}

/// A number in -1..=1, different on every call.
fn jitter() -> f64 {
    let random = RandomState::new().hash_one(SystemTime::now());
    (random as f64 / u64::MAX as f64) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_half_the_remaining_life_give_or_take_the_jitter() {
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_after = received + Duration::from_secs(60);
        assert_eq!(
            renewal_time(received, not_after, 0.0),
            received + Duration::from_secs(30)
        );
        assert_eq!(
            renewal_time(received, not_after, 1.0),
            received + Duration::from_secs(33)
        );
        assert_eq!(
            renewal_time(received, not_after, -1.0),
            received + Duration::from_secs(27)
        );
        // Already expired: renew at once.
        assert_eq!(renewal_time(not_after, received, 0.5), not_after);
        for _ in 0..100 {
            assert!((-1.0..=1.0).contains(&jitter()));
        }
    }

    #[tokio::test]
    async fn a_connection_waits_for_its_pods_first_certificate() {
        let ca = ambit_identity::CertificateAuthority::generate("cluster.local").unwrap();
        let bundle = ambit_identity::TrustBundle::from_pem("cluster.local", ca.root_pem()).unwrap();
        let ca_identity = Identity::new("cluster.local", "ambit-system", "ambit-ca");
        let client = CaClient::new("127.0.0.1:9", &bundle, &ca_identity, "t".to_string()).unwrap();
        let certificates = Arc::new(Certificates::new(client, "cluster.local".into()));
        let identity = Identity::new("cluster.local", "shop", "cart");
        assert!(certificates
            .obtain(&identity, Duration::from_millis(50))
            .await
            .is_none());

        let waiting = tokio::spawn({
            let (certificates, identity) = (certificates.clone(), identity.clone());
            async move {
                certificates
                    .obtain(&identity, Duration::from_secs(10))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (key, csr) = ambit_identity::certificate_request(&identity).unwrap();
        let pem = ca
            .issue(&csr, &identity, Duration::from_secs(3600))
            .unwrap();
        let certificate = WorkloadCertificate::new(&identity, &key, &pem).unwrap();
        certificates.want([identity.clone()].into());
        certificates.hold(
            identity.clone(),
            certificate,
            SystemTime::now() + Duration::from_secs(1800),
        );
        let obtained = waiting
            .await
            .unwrap()
            .expect("the certificate, once issued");
        assert_eq!(obtained.identity, identity);
    }

    #[test]
    fn wanted_identities_without_a_current_certificate_are_due() {
        let id = |sa: &str| Identity::new("cluster.local", "shop", sa);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ca = ambit_identity::CertificateAuthority::generate("cluster.local").unwrap();
        let held_until = |identity: &Identity, renew_at| {
            let (key, csr) = ambit_identity::certificate_request(identity).unwrap();
            let pem = ca.issue(&csr, identity, Duration::from_secs(3600)).unwrap();
            let certificate = Arc::new(WorkloadCertificate::new(identity, &key, &pem).unwrap());
            (
                identity.clone(),
                Held {
                    certificate,
                    renew_at,
                },
            )
        };
        let held: BTreeMap<_, _> = [
            held_until(&id("fresh"), now + Duration::from_secs(10)),
            held_until(&id("stale"), now - Duration::from_secs(1)),
            held_until(&id("unwanted"), now - Duration::from_secs(1)),
        ]
        .into();
        let wanted: BTreeSet<_> = [id("fresh"), id("stale"), id("new")].into();
        assert_eq!(due(&wanted, &held, now), [id("new"), id("stale")]);
    }
}
