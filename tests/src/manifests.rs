//! The mesh a test describes (pods with their enrollment, Services with
//! their endpoints), written as the Kubernetes objects a cluster would hold.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ambit_config::model::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, USE_WAYPOINT_LABEL};
use serde_json::{json, Value};

use crate::Pod;

#[derive(Debug, Clone, Default)]
pub struct MeshConfig {
    pub pods: Vec<PodConfig>,
    pub services: Vec<ServiceConfig>,
    /// Istio objects as written (PeerAuthentication, AuthorizationPolicy…).
    pub istio: Vec<Value>,
}

#[derive(Debug, Clone)]
pub struct PodConfig {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// A dual-stack pod's IPv6 address, which the test gave it.
    pub ipv6: Option<Ipv6Addr>,
    /// An IPv6-only pod: the test took its IPv4 address away.
    pub without_ipv4: bool,
    pub enrolled: bool,
    /// Labels beside the default `app: <pod name>` (which they may replace).
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

impl PodConfig {
    pub fn of(pod: &Pod, enrolled: bool) -> Self {
        Self {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            node: pod.node.clone(),
            ip: pod.ip,
            ipv6: None,
            without_ipv4: false,
            enrolled,
            labels: Vec::new(),
            annotations: Vec::new(),
        }
    }
}

/// A Service in `default` with one port and its endpoints (all ready).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
    /// The waypoint it is bound to (`istio.io/use-waypoint`), if any.
    pub waypoint: Option<String>,
    /// The port's name, which tells Istio its protocol (`http`, `grpc`, `tcp`…).
    pub port_name: String,
    /// Further ports, as (name, port, target port).
    pub more_ports: Vec<(String, u16, u16)>,
}

/// A Service in `default` at `vip:port` whose endpoints are `pods` at `target_port`.
pub fn service(
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    target_port: u16,
    pods: &[&Pod],
) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        vip,
        port,
        target_port,
        endpoints: pods.iter().map(|pod| pod.ip).collect(),
        waypoint: None,
        port_name: "http".into(),
        more_ports: Vec::new(),
    }
}

impl MeshConfig {
    /// Lists each pod's IPv6 address too, as Kubernetes lists a dual-stack
    /// pod's (see [`crate::Cluster::add_ipv6`]).
    pub fn dual_stack(mut self) -> Self {
        for pod in &mut self.pods {
            pod.ipv6 = Some(crate::cluster::ipv6_twin(pod.ip));
        }
        self
    }

    /// Labels the pods named `<app>-<version>` as Bookinfo does, `app` and
    /// `version`, so that subsets select by version.
    pub fn versioned(mut self, app: &str) -> Self {
        let prefix = format!("{app}-");
        for pod in self.pods.iter_mut() {
            if let Some(version) = pod.name.strip_prefix(&prefix) {
                pod.labels = vec![
                    ("app".into(), app.into()),
                    ("version".into(), version.into()),
                ];
            }
        }
        self
    }

    /// The objects, as the API server would return them.
    pub fn objects(&self) -> Vec<Value> {
        let mut objects = Vec::new();
        for pod in &self.pods {
            // Each pod is its own app, as policies and metrics name it.
            let mut labels = json!({ "app": pod.name });
            for (key, value) in &pod.labels {
                labels[key] = json!(value);
            }
            if pod.enrolled {
                labels[DATAPLANE_MODE_LABEL] = json!(DATAPLANE_MODE_AMBIENT);
            }
            let annotations: serde_json::Map<String, Value> = pod
                .annotations
                .iter()
                .map(|(key, value)| (key.clone(), json!(value)))
                .collect();
            let pod_ips: Vec<IpAddr> = (!pod.without_ipv4)
                .then_some(IpAddr::from(pod.ip))
                .into_iter()
                .chain(pod.ipv6.map(IpAddr::from))
                .collect();
            let pod_ip = pod_ips.first();
            let pod_ips: Vec<Value> = pod_ips.iter().map(|ip| json!({ "ip": ip })).collect();
            objects.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                    "labels": labels, "annotations": annotations,
                },
                "spec": { "nodeName": pod.node, "serviceAccountName": pod.name },
                "status": { "phase": "Running", "podIP": pod_ip, "podIPs": pod_ips },
            }));
        }
        for service in &self.services {
            let labels = match &service.waypoint {
                Some(waypoint) => json!({ USE_WAYPOINT_LABEL: waypoint }),
                None => json!({}),
            };
            let ports: Vec<(&String, u16, u16)> =
                std::iter::once((&service.port_name, service.port, service.target_port))
                    .chain(service.more_ports.iter().map(|(n, p, t)| (n, *p, *t)))
                    .collect();
            let service_ports: Vec<Value> = ports
                .iter()
                .map(|(name, port, target)| json!({ "name": name, "port": port, "targetPort": target, "protocol": "TCP" }))
                .collect();
            let endpoint_ports: Vec<Value> = ports
                .iter()
                .map(|(name, _, target)| json!({ "name": name, "port": target, "protocol": "TCP" }))
                .collect();
            objects.push(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": service.name, "namespace": "default", "labels": labels },
                "spec": {
                    "clusterIP": service.vip, "clusterIPs": [service.vip],
                    "ports": service_ports,
                },
            }));
            let endpoints: Vec<Value> = service
                .endpoints
                .iter()
                .map(|ip| json!({ "addresses": [ip], "conditions": { "ready": true } }))
                .collect();
            objects.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{}-1", service.name), "namespace": "default",
                    "labels": { "kubernetes.io/service-name": service.name },
                },
                "addressType": "IPv4", "endpoints": endpoints,
                "ports": endpoint_ports,
            }));
        }
        objects.extend(self.istio.iter().cloned());
        objects
    }

    /// The objects as one multi-document manifest (JSON is YAML).
    pub fn manifests(&self) -> serde_json::Result<String> {
        let documents = self
            .objects()
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(documents.join("\n---\n") + "\n")
    }
}
