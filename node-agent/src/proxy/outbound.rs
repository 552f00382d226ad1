//! Outbound: a connection from an enrolled pod, redirected by `connect4`
//! (or `connect6`).
//! Where it goes is one pure decision ([`plan`], like ztunnel's
//! `build_request`); the handler then does the socket work.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambit_config::api::networking::Resolution;
use ambit_config::model::{dns_targets, EntryAt, Key, Mesh, OutboundMode, WaypointRef};
use ambit_ebpf_common::AGENT_MARK;
use ambit_hbone::Caller;
use ambit_identity::Identity;
use ambit_mesh_tls::certificates::{meshed_identity_at, workload_identity};
use ambit_mesh_tls::hbone::Party;
use tokio::net::TcpStream;

use super::meter::Meter;
use super::{agent_socket, carry_plain, connect, PodContext, ProxyInputs, Report};
use crate::metrics::{
    self, DestinationService, Reporter, ResponseFlags, SecurityPolicy, TcpLabels,
};

/// Where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// Plain TCP to the target: a destination outside the mesh, or the
    /// agent holds no identities.
    Direct { target: SocketAddr },
    /// HBONE to the agent of the destination pod, which serves `target`.
    Hbone { target: SocketAddr, peer: Identity },
    /// HBONE to a waypoint pod's own 15008, asking for `target` (the
    /// address the caller dialled: a Service's VIP and port, or a pod's),
    /// as ztunnel does; over the target's family where the waypoint has an
    /// address of it, else over the other.
    Waypoint {
        waypoint: IpAddr,
        peer: Identity,
        target: SocketAddr,
    },
    /// To an address of `host` at `port`, as the node's resolver answers
    /// (a ServiceEntry of `resolution: DNS`): each address in turn under
    /// `spread` (DNS), else the first (DNS_ROUND_ROBIN).
    Resolve {
        host: String,
        port: u16,
        spread: Option<Key>,
    },
    Refuse {
        reason: String,
        flags: ResponseFlags,
    },
}

/// A plan and the Service (or ServiceEntry host) it serves, for the
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Planned {
    pub plan: Plan,
    pub service: Option<DestinationService>,
}

/// Per Service, how many connections the agent has spread over its
/// endpoints: round robin, kept outside the model.
#[derive(Default)]
pub struct Turns(Mutex<HashMap<Key, usize>>);

impl Turns {
    /// This Service's turn, counting it.
    fn next(&self, service: &Key) -> usize {
        let mut turns = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Forget Services gone from the mesh now and then, not per call.
        if turns.len() > 4096 {
            turns.clear();
        }
        let turn = turns.entry(service.clone()).or_default();
        *turn = turn.wrapping_add(1);
        *turn - 1
    }
}

/// Where the connection of the pod `caller` to `original` goes.
/// `trust_domain` is the agent's when it holds identities; `outbound` is
/// the mesh's `outboundTrafficPolicy.mode`; `turn` gives a Service's next
/// round-robin position.
pub(super) fn plan(
    mesh: &Mesh,
    (trust_domain, outbound): (Option<&str>, OutboundMode),
    caller: &Key,
    original: Option<SocketAddr>,
    turn: &mut dyn FnMut(&Key) -> usize,
) -> Planned {
    let refuse = |reason: String, service: Option<DestinationService>| Planned {
        plan: Plan::Refuse {
            reason,
            flags: ResponseFlags::ConnectFailed,
        },
        service,
    };
    let Some(original) = original else {
        return refuse("its original destination is unknown".into(), None);
    };
    let identity = |ip: IpAddr| -> Option<Identity> {
        let (key, workload) = mesh.workload_by_ip(ip)?;
        Some(workload_identity(trust_domain?, key, workload))
    };
    // Through a waypoint: to one of its pods, asking for the address the
    // caller dialled. Without identities there is no way to it: refused,
    // never sent around it.
    let to_waypoint = |waypoint: WaypointRef, turn: &mut dyn FnMut(&Key) -> usize| {
        let Some(service) = mesh.services.get(&waypoint.0) else {
            return Err(format!("its waypoint {} does not exist", waypoint.0));
        };
        if trust_domain.is_none() {
            return Err(format!(
                "its waypoint {} is reached over HBONE, and this agent holds no identities",
                waypoint.0
            ));
        }
        let pods = service.ready_preferring(original.ip());
        if pods.is_empty() {
            return Err(format!("its waypoint {} has no ready endpoint", waypoint.0));
        }
        let pod = pods[turn(&waypoint.0) % pods.len()];
        let peer = identity(pod).ok_or_else(|| format!("the waypoint pod {pod} is unknown"))?;
        Ok(Plan::Waypoint {
            waypoint: pod,
            peer,
            target: original,
        })
    };
    let through =
        |waypoint, name: Option<DestinationService>, turn: &mut dyn FnMut(&Key) -> usize| {
            match to_waypoint(waypoint, turn) {
                Ok(plan) => Planned {
                    plan,
                    service: name,
                },
                Err(reason) => refuse(reason, name),
            }
        };
    // A waypoint's own upstream traffic is never sent back to a waypoint.
    let is_waypoint = |waypoint: &WaypointRef| {
        let own = mesh.workloads.get(caller).map(|w| w.ips.as_slice());
        let pods = mesh.services.get(&waypoint.0);
        pods.zip(own)
            .is_some_and(|(pods, own)| own.iter().any(|ip| pods.has_endpoint(*ip)))
    };
    let service = mesh.service_by_vip(original.ip(), original.port());
    let name = service.map(|(key, _, _)| DestinationService::service(&key.name, &key.namespace));
    // A Service's waypoint, else for a pod's own address the pod's.
    let bound = match service {
        Some((key, _, _)) => mesh.waypoint_for_service(key),
        None => mesh
            .workload_by_ip(original.ip())
            .and_then(|(key, _)| mesh.waypoint_for_workload(key)),
    };
    if let Some(waypoint) = bound.filter(|waypoint| !is_waypoint(waypoint)) {
        return through(waypoint, name, turn);
    }
    // Not a Service nor a pod of the mesh: a ServiceEntry may declare it.
    let pod = mesh.workload_by_ip(original.ip());
    let meshed_pod = pod.is_some_and(|(key, _)| mesh.is_enrolled(&key.namespace, &key.name));
    let entry = match (service, meshed_pod) {
        (None, false) => mesh.service_entry_at(original.ip(), original.port(), &caller.namespace),
        _ => None,
    };
    if let Some(found) = entry {
        let name = (found.entry.spec.hosts.first())
            .map(|host| DestinationService::entry(host, &found.key.namespace));
        // Bound to a waypoint (an egress gateway), as a Service is.
        let bound = mesh.waypoint_for_service_entry(found.key);
        if let Some(waypoint) = bound.filter(|waypoint| !is_waypoint(waypoint)) {
            return through(waypoint, name, turn);
        }
        return match entry_target(mesh, found, original, turn) {
            Ok(EntryTarget::Address(target)) => Planned {
                plan: direct_or_hbone(mesh, trust_domain, target),
                service: name,
            },
            Ok(EntryTarget::Resolve(plan)) => Planned {
                plan,
                service: name,
            },
            Err(reason) => refuse(reason, name),
        };
    }
    // Outside the cluster and declared by nothing: Istio's REGISTRY_ONLY
    // sends it nowhere.
    if service.is_none() && pod.is_none() && outbound == OutboundMode::RegistryOnly {
        return Planned {
            plan: Plan::Refuse {
                reason: format!(
                    "{original} is no Service, pod or ServiceEntry address, and the mesh's \
                     outboundTrafficPolicy is REGISTRY_ONLY"
                ),
                flags: ResponseFlags::NoRoute,
            },
            service: Some(DestinationService::black_hole()),
        };
    }
    let target = match service {
        // An endpoint of the family dialled, as kube-proxy picks.
        Some((key, service, target_port)) => {
            let ready: Vec<IpAddr> = service.ready_like(original.ip()).collect();
            if ready.is_empty() {
                let family = if original.is_ipv4() { "IPv4" } else { "IPv6" };
                let reason = format!(
                    "service {}.{} has no ready {family} endpoint",
                    key.name, key.namespace
                );
                return refuse(reason, name);
            }
            SocketAddr::new(ready[turn(key) % ready.len()], target_port)
        }
        None => original,
    };
    Planned {
        plan: direct_or_hbone(mesh, trust_domain, target),
        service: name,
    }
}

/// To `target`: over HBONE when it is a pod of the mesh and the agent
/// holds identities, else in plain TCP.
fn direct_or_hbone(mesh: &Mesh, trust_domain: Option<&str>, target: SocketAddr) -> Plan {
    let peer =
        trust_domain.and_then(|trust_domain| meshed_identity_at(trust_domain, mesh, target.ip()));
    match peer {
        Some(peer) => Plan::Hbone { target, peer },
        None => Plan::Direct { target },
    }
}

/// Where a ServiceEntry sends a connection: an address, or a name to
/// resolve first.
enum EntryTarget {
    Address(SocketAddr),
    Resolve(Plan),
}

/// Where a connection to `original`, an address of the ServiceEntry
/// `found`, goes: for `resolution: STATIC` one of its endpoints in turn
/// (of the family dialled, where it has some), those it lists (at the port an endpoint names for the entry's port,
/// else its `targetPort`, else the port itself) or the pods of its
/// namespace its `workloadSelector` picks; for DNS and DNS_ROUND_ROBIN an
/// address of one of its endpoints' names in turn, or of its host; for
/// NONE the address dialled; DYNAMIC_DNS (a request's host to resolve)
/// only through a waypoint, unless the entry has addresses of its own.
fn entry_target(
    mesh: &Mesh,
    found: EntryAt<'_>,
    original: SocketAddr,
    turn: &mut dyn FnMut(&Key) -> usize,
) -> Result<EntryTarget, String> {
    let spec = &found.entry.spec;
    let port = found.port;
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    if let Resolution::Dns | Resolution::DnsRoundRobin = resolution {
        let names = dns_targets(spec, port);
        if names.is_empty() {
            return Err(format!("ServiceEntry {} has no name to resolve", found.key));
        }
        let (host, port) = names[turn(found.key) % names.len()];
        // An endpoint given by address needs no resolving.
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(EntryTarget::Address(SocketAddr::new(ip, port)));
        }
        return Ok(EntryTarget::Resolve(Plan::Resolve {
            host: host.to_string(),
            port,
            spread: (resolution == Resolution::Dns).then(|| found.key.clone()),
        }));
    }
    // An address Ambit gave leads nowhere by itself: only a waypoint
    // resolves the host of each request.
    if resolution == Resolution::DynamicDns && spec.addresses.is_empty() {
        return Err(format!(
            "ServiceEntry {} resolves DYNAMIC_DNS, which only a waypoint does \
             (label it istio.io/use-waypoint)",
            found.key
        ));
    }
    if resolution != Resolution::Static {
        return Ok(EntryTarget::Address(original));
    }
    // Those of the family dialled where it has some (a dual-stack pod is
    // one endpoint, not two), else any.
    let endpoints = mesh.service_entry_endpoints(found.key, spec, port);
    let alike: Vec<SocketAddr> = (endpoints.iter())
        .filter(|endpoint| endpoint.is_ipv4() == original.is_ipv4())
        .copied()
        .collect();
    let endpoints = if alike.is_empty() { endpoints } else { alike };
    if endpoints.is_empty() {
        return Err(format!("ServiceEntry {} has no endpoint", found.key));
    }
    Ok(EntryTarget::Address(
        endpoints[turn(found.key) % endpoints.len()],
    ))
}

pub(super) async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let original = inputs.maps.take_original_dst(pod.netns.cookie(), peer);
    let snapshot = inputs.mesh.snapshot();
    let own = pod.workload(&snapshot);
    let mesh_tls = inputs.mesh_tls.as_ref();
    let trust_domain = mesh_tls.map(|m| m.certificates().trust_domain());
    let outbound = snapshot.outbound_mode(&inputs.policy.root_namespace);
    let Planned { plan, service } = plan(
        &snapshot,
        (trust_domain, outbound),
        &pod.key,
        original,
        &mut |key| inputs.turns.next(key),
    );
    // A name to resolve first: the plan for the address it gives.
    let plan = match plan {
        Plan::Resolve { host, port, spread } => match inputs.resolver.addresses(&host).await {
            Ok(addresses) if !addresses.is_empty() => {
                let index = spread.map_or(0, |key| inputs.turns.next(&key) % addresses.len());
                let target = SocketAddr::new(addresses[index].into(), port);
                direct_or_hbone(&snapshot, trust_domain, target)
            }
            Ok(_) => Plan::Refuse {
                reason: format!("{host} has no IPv4 address"),
                flags: ResponseFlags::ConnectFailed,
            },
            Err(error) => Plan::Refuse {
                reason: format!("resolving {host}: {error}"),
                flags: ResponseFlags::ConnectFailed,
            },
        },
        plan => plan,
    };
    let source = mesh_tls.and_then(|m| {
        m.certificates()
            .identity_of(&snapshot, &pod.key.namespace, &pod.key.name)
    });
    // Where the bytes go, and who must answer there.
    let (connect_to, target, peer_identity) = match &plan {
        Plan::Direct { target } => (*target, *target, None),
        Plan::Hbone { target, peer } => (*target, *target, Some(peer)),
        Plan::Waypoint {
            waypoint,
            peer,
            target,
        } => (
            SocketAddr::new(*waypoint, ambit_hbone::HBONE_PORT),
            *target,
            Some(peer),
        ),
        // A name is resolved above; one that was not fails closed.
        Plan::Refuse { .. } | Plan::Resolve { .. } => {
            let (reason, flags) = match &plan {
                Plan::Refuse { reason, flags } => (reason.clone(), *flags),
                _ => (
                    "a name left unresolved".to_string(),
                    ResponseFlags::ConnectFailed,
                ),
            };
            let labels = TcpLabels::new(
                Reporter::Source,
                metrics::Party::known(own, None),
                metrics::Party::default(),
                service.as_ref(),
                SecurityPolicy::None,
            );
            drop(snapshot);
            let target = original.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            // Dropping the client closes it: the caller sees a reset/EOF.
            return Report::new(&inputs, &pod, labels, peer, target).refused(flags, &reason);
        }
    };
    // The pod's own address, of the family it connects in: the accepted
    // connection shows only loopback, where capture sent it.
    let pod_ip = own.and_then(|(_, workload)| {
        (workload.ips.iter().copied()).find(|ip| ip.is_ipv4() == connect_to.is_ipv4())
    });
    let labels = TcpLabels::new(
        Reporter::Source,
        metrics::Party::known(own, source.as_ref().filter(|_| peer_identity.is_some())),
        metrics::Party::known(snapshot.workload_by_ip(connect_to.ip()), peer_identity),
        service.as_ref(),
        match peer_identity {
            Some(_) => SecurityPolicy::MutualTls,
            None => SecurityPolicy::None,
        },
    );
    // What the pod's streams tell peers of its workload, as ztunnel's do.
    let baggage = peer_identity
        .and(own)
        .map(|(key, workload)| ambit_telemetry::baggage::header_value(key, workload));
    drop(snapshot);
    let caller = SocketAddr::new(pod_ip.unwrap_or(peer.ip()), peer.port());
    let report = Report::new(&inputs, &pod, labels, caller, connect_to);
    if let (Some(mesh_tls), Some(destination)) = (mesh_tls, peer_identity) {
        let upstream = match (&source, pod_ip) {
            (Some(source), Some(pod_ip)) => {
                let caller = Caller {
                    client: pod_ip,
                    service: service.as_ref().map(|service| service.host.as_str()),
                    baggage: baggage.as_deref(),
                    trace: Some(report.trace),
                };
                let peer = Party {
                    identity: destination,
                    ip: connect_to.ip(),
                };
                let netns = &pod.netns;
                mesh_tls
                    .open((source, caller), peer, target, |address| async move {
                        let socket = agent_socket(netns, AGENT_MARK, address.ip(), None)?;
                        connect(socket, address).await
                    })
                    .await
            }
            _ => Err(std::io::Error::other(
                "the pod's identity or address is unknown",
            )),
        };
        let tunnel = match upstream {
            Ok(tunnel) => tunnel,
            Err(error) => return report.refused(ResponseFlags::ConnectFailed, &error),
        };
        let meter = Meter::caller(&client);
        let carry = async move {
            let mut client = client;
            let _ = client.set_nodelay(true);
            tunnel.relay(&mut client).await
        };
        return report.relay(meter, carry).await;
    }
    let upstream = match agent_socket(&pod.netns, AGENT_MARK, target.ip(), None) {
        Ok(socket) => connect(socket, target).await,
        Err(error) => Err(error),
    };
    match upstream {
        Ok(upstream) => {
            let meter = Meter::caller(&client);
            report
                .relay(meter, carry_plain(client, upstream, &inputs, &pod))
                .await
        }
        Err(error) => report.refused(ResponseFlags::ConnectFailed, &error),
    }
}

#[cfg(test)]
mod tests;
