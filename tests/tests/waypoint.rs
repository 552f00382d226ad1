//! The waypoint reads the mesh from either source and shows, on its admin
//! port, the Services bound to it and the policy that applies to them.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ambit_testbed::apiserver::ApiServer;
use ambit_testbed::mesh::{self, MeshConfig, Source};
use ambit_testbed::waypoint::Waypoint;
use ambit_testbed::Cluster;
use serde_json::json;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

#[test]
fn a_waypoint_follows_its_bindings_from_either_source() -> anyhow::Result<()> {
    let cluster = Cluster::builder().node(&["waypoint", "reviews"]).build()?;
    let [waypoint_pod, reviews] = cluster.pods_named(["waypoint", "reviews"])?;
    let config = |bound: bool| MeshConfig {
        services: vec![mesh::ServiceConfig {
            waypoint: bound.then(|| "waypoint".to_string()),
            ..mesh::service("reviews", VIP, 9080, 9080, &[reviews])
        }],
        ..mesh::enrolling(&cluster, &[reviews], vec![])
    };
    let api = ApiServer::start(&cluster)?;
    let sources = [
        Source::Directory,
        Source::Kubeconfig(api.kubeconfig().to_path_buf()),
    ];
    for source in sources {
        let publish = |bound| match &source {
            Source::Directory => mesh::write_config(&cluster, &config(bound)),
            Source::Kubeconfig(_) => api.apply(&config(bound)),
        };
        publish(true)?;
        let waypoint = Waypoint::start(&cluster, waypoint_pod, "waypoint", &source)?;
        let dump = waypoint.config_dump()?;
        assert_eq!(dump["waypoint"], "default/waypoint", "{source:?}");
        assert_eq!(
            dump["services"],
            json!([{
                "service": "default/reviews",
                "host": "reviews.default.svc.cluster.local",
                "virtualServices": [],
                "destinationRules": [],
            }]),
            "{source:?}"
        );
        assert_eq!(
            dump["mesh"]["services"]["default/reviews"]["vips"],
            json!([VIP]),
            "{source:?}: the whole model is in the dump"
        );

        // The Service leaves the waypoint: the waypoint follows.
        publish(false)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while waypoint.config_dump()?["services"] != json!([]) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{source:?}: the waypoint never saw the Service leave"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        waypoint.stop()?;
    }
    Ok(())
}
