//! Ambit's entry in the node's CNI configuration: the runtime runs the
//! plugins of the first configuration file by name in its directory (the
//! cluster's own CNI writes it), so the entry goes last in that file's
//! `plugins`. Another CNI may rewrite the file and drop the entry; the
//! installer puts it back. Pure: JSON in, JSON out.

use std::path::Path;

use serde_json::{json, Value};

/// The plugin's `type`: the name of its binary in the CNI bin directory.
pub const PLUGIN_TYPE: &str = "ambit-cni";

/// The entry Ambit adds to a configuration's `plugins`.
pub fn entry(agent_socket: &Path, exempt_namespaces: &[String]) -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "agentSocket": agent_socket,
        "exemptNamespaces": exempt_namespaces,
    })
}

/// The configuration file the runtime uses among `names` (the files of
/// its directory): the first by name of those ending in `.conflist`,
/// `.conf` or `.json`, as the kubelet's runtimes pick it.
pub fn primary<'n>(names: impl IntoIterator<Item = &'n str>) -> Option<&'n str> {
    names
        .into_iter()
        .filter(|name| !name.starts_with('.'))
        .filter(|name| {
            [".conflist", ".conf", ".json"]
                .iter()
                .any(|e| name.ends_with(e))
        })
        .min()
}

/// `config` with `entry` as its last plugin (an older Ambit entry taken
/// out first); a single-plugin `.conf` becomes a list of the two. `None`
/// when `config` already ends with exactly `entry`: nothing to write.
pub fn with_entry(config: &Value, entry: &Value) -> Result<Option<Value>, String> {
    let fields = config
        .as_object()
        .ok_or("the CNI configuration is not a JSON object")?;
    let mut list = match fields.get("plugins") {
        Some(Value::Array(_)) => config.clone(),
        Some(_) => return Err("its plugins is not a list".to_string()),
        // A single plugin's configuration: its name and version move up.
        None => {
            let mut plugin = fields.clone();
            let version = plugin.remove("cniVersion");
            let name = plugin.remove("name");
            json!({ "cniVersion": version, "name": name, "plugins": [plugin] })
        }
    };
    let plugins = list["plugins"].as_array_mut().ok_or("no plugins")?;
    if plugins.last() == Some(entry) && config.get("plugins").is_some() {
        let ours = plugins.iter().filter(|p| is_ours(p)).count();
        if ours == 1 {
            return Ok(None);
        }
    }
    plugins.retain(|plugin| !is_ours(plugin));
    plugins.push(entry.clone());
    Ok(Some(list))
}

/// `config` without Ambit's entry; `None` when it has none.
pub fn without_entry(config: &Value) -> Option<Value> {
    let plugins = config.get("plugins")?.as_array()?;
    if !plugins.iter().any(is_ours) {
        return None;
    }
    let mut cleaned = config.clone();
    if let Some(plugins) = cleaned["plugins"].as_array_mut() {
        plugins.retain(|plugin| !is_ours(plugin));
    }
    Some(cleaned)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Value {
        entry(
            Path::new("/var/run/ambit/cni.sock"),
            &["ambit-system".into()],
        )
    }

    #[test]
    fn the_runtime_takes_the_first_configuration_by_name() {
        let names = [
            "99-loopback.conf",
            "10-calico.conflist",
            "05-cilium.conflist",
            "README",
            ".10-x.conflist.tmp",
        ];
        assert_eq!(primary(names), Some("05-cilium.conflist"));
        assert_eq!(primary(["notes.txt"]), None);
    }

    #[test]
    fn the_entry_goes_last_once_and_comes_out_whole() {
        let calico = json!({
            "cniVersion": "1.0.0", "name": "k8s-pod-network",
            "plugins": [{ "type": "calico" }, { "type": "portmap" }],
        });
        let added = with_entry(&calico, &ours()).unwrap().unwrap();
        assert_eq!(added["plugins"][2], ours());
        assert_eq!(added["plugins"].as_array().unwrap().len(), 3);
        // Already there: nothing to write.
        assert_eq!(with_entry(&added, &ours()).unwrap(), None);
        // An older entry (another socket), or one not last: replaced, last.
        let mut moved = added.clone();
        moved["plugins"].as_array_mut().unwrap().swap(1, 2);
        let fixed = with_entry(&moved, &ours()).unwrap().unwrap();
        assert_eq!(fixed["plugins"][2], ours());
        assert_eq!(fixed["plugins"].as_array().unwrap().len(), 3);
        // Removed, the cluster's configuration is as it was.
        assert_eq!(without_entry(&added), Some(calico.clone()));
        assert_eq!(without_entry(&calico), None);
    }

    #[test]
    fn a_single_plugin_configuration_becomes_a_list() {
        let bridge = json!({ "cniVersion": "0.4.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0" });
        let added = with_entry(&bridge, &ours()).unwrap().unwrap();
        assert_eq!(
            added,
            json!({
                "cniVersion": "0.4.0", "name": "bridge-net",
                "plugins": [{ "type": "bridge", "bridge": "cni0" }, ours()],
            })
        );
        assert!(with_entry(&json!([1]), &ours()).is_err());
        assert!(with_entry(&json!({ "plugins": 3 }), &ours()).is_err());
    }
}
