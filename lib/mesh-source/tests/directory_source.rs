#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test
//! The manifest directory source follows files being added, rewritten in
//! place, replaced by a rename, added in a new subdirectory and removed,
//! with an object defined twice and a document that cannot be read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_config::model::{Key, Mesh};
use ambit_mesh_source::{MeshHandle, Source};

fn service(name: &str, vip: &str, team: &str) -> String {
    format!(
        "{{apiVersion: v1, kind: Service, metadata: {{name: {name}, namespace: shop, labels: {{team: {team}}}}}, \
         spec: {{clusterIP: {vip}, ports: [{{port: 80}}]}}}}\n"
    )
}

/// Waits until the published model passes `check`.
async fn until(handle: &MeshHandle, what: &str, check: impl Fn(&Mesh) -> bool) {
    let mut changes = handle.subscribe();
    let wait = async {
        while !check(&changes.borrow_and_update()) {
            changes.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "never saw: {what}; the model holds {:?}",
                handle.snapshot().counts()
            )
        });
}

fn team(mesh: &Mesh, name: &str) -> Option<String> {
    let service = mesh.services.get(&Key::new("shop", name))?;
    service.labels.get("team").cloned()
}

fn replace(dir: &Path, file: &str, text: &str) {
    let temporary = dir.join(format!(".{file}.tmp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, dir.join(file)).unwrap();
}

#[tokio::test]
async fn the_directory_source_follows_every_kind_of_file_change() {
    let dir = std::env::temp_dir().join(format!("ambit-directory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cart.yaml"), service("cart", "10.96.0.1", "red")).unwrap();
    let handle = Arc::new(MeshHandle::default());
    let task = ambit_mesh_source::start(&Source::Directory(dir.clone()), handle.clone())
        .await
        .unwrap();
    assert_eq!(team(&handle.snapshot(), "cart").as_deref(), Some("red"));

    std::fs::write(dir.join("pay.yaml"), service("pay", "10.96.0.2", "blue")).unwrap();
    until(&handle, "a new file", |m| {
        team(m, "pay").as_deref() == Some("blue")
    })
    .await;

    std::fs::write(dir.join("cart.yaml"), service("cart", "10.96.0.1", "green")).unwrap();
    until(&handle, "a file rewritten in place", |m| {
        team(m, "cart").as_deref() == Some("green")
    })
    .await;

    replace(&dir, "cart.yaml", &service("cart", "10.96.0.1", "gold"));
    until(&handle, "a file renamed over", |m| {
        team(m, "cart").as_deref() == Some("gold")
    })
    .await;

    std::fs::create_dir_all(dir.join("more")).unwrap();
    std::fs::write(
        dir.join("more/ship.yaml"),
        service("ship", "10.96.0.3", "grey"),
    )
    .unwrap();
    until(&handle, "a file in a new subdirectory", |m| {
        team(m, "ship").as_deref() == Some("grey")
    })
    .await;

    // One object in two files: the later file (by name) wins while it has it.
    std::fs::write(dir.join("dup.yaml"), service("cart", "10.96.0.1", "plum")).unwrap();
    until(&handle, "the later of two definitions", |m| {
        team(m, "cart").as_deref() == Some("plum")
    })
    .await;
    std::fs::remove_file(dir.join("dup.yaml")).unwrap();
    until(&handle, "the remaining definition", |m| {
        team(m, "cart").as_deref() == Some("gold")
    })
    .await;

    std::fs::remove_file(dir.join("pay.yaml")).unwrap();
    until(&handle, "a removed file", |m| team(m, "pay").is_none()).await;
    let vip = "10.96.0.2".parse().unwrap();
    assert!(
        handle.snapshot().service_by_vip(vip, 80).is_none(),
        "its VIP is gone with it"
    );

    // A document that cannot be read is rejected alone; the rest of its file applies.
    let broken = "{apiVersion: v1, kind: Service, metadata: {name: bad, namespace: shop}, spec: {ports: [{port: 99999}]}}\n";
    std::fs::write(
        dir.join("more/ship.yaml"),
        format!("{broken}---\n{}", service("ship", "10.96.0.3", "black")),
    )
    .unwrap();
    until(&handle, "the good half of a file", |m| {
        team(m, "ship").as_deref() == Some("black")
    })
    .await;
    assert!(!handle
        .snapshot()
        .services
        .contains_key(&Key::new("shop", "bad")));

    task.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One of a few objects in one of a few versions; version 2 of the
/// AuthorizationPolicy cannot be read and must be kept as a denial.
fn document(object: u8, version: u8) -> String {
    let labels = format!("{{v: \"{version}\"}}");
    match object % 3 {
        0 => service(&format!("s{object}"), &format!("10.96.1.{}", version + 1), &version.to_string()),
        1 => format!(
            "{{apiVersion: v1, kind: Pod, metadata: {{name: p{object}, namespace: shop, labels: {labels}}}, \
             status: {{podIP: 10.244.0.{}}}}}\n",
            version + 2
        ),
        _ if version == 2 => format!(
            "{{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {{name: a{object}, namespace: shop}}, \
             spec: {{action: ALLOW, rules: [{{to: [{{operation: {{ports: [\"http\"]}}}}]}}]}}}}\n"
        ),
        _ => format!(
            "{{apiVersion: security.istio.io/v1, kind: AuthorizationPolicy, metadata: {{name: a{object}, namespace: shop, labels: {labels}}}, \
             spec: {{action: DENY, rules: [{{}}]}}}}\n"
        ),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// After any sequence of file writes and removals, the model kept up to
    /// date change by change equals the model read from scratch.
    #[test]
    fn following_changes_gives_the_model_of_a_fresh_read(
        steps in proptest::collection::vec(
            (0..3u8, proptest::option::of(proptest::collection::vec((0..6u8, 0..3u8), 0..4))),
            1..25,
        )
    ) {
        let dir = std::env::temp_dir().join(format!("ambit-directory-prop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut followed = ambit_mesh_source::directory::Directory::new(dir.clone());
        let mut mesh = Mesh::default();
        for (file, content) in steps {
            let path = dir.join(format!("f{file}.yaml"));
            match content {
                Some(documents) => {
                    let text: Vec<String> = documents.iter().map(|(o, v)| document(*o, *v)).collect();
                    replace(&dir, &format!("f{file}.yaml"), &text.join("---\n"));
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
            followed.load(&mut mesh).unwrap();
            let mut fresh = Mesh::default();
            ambit_mesh_source::directory::Directory::new(dir.clone()).load(&mut fresh).unwrap();
            proptest::prop_assert_eq!(&mesh, &fresh);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[tokio::test]
async fn bad_files_are_reported_alone_and_what_was_in_force_stays() {
    let dir = std::env::temp_dir().join(format!("ambit-directory-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("cart.yaml"), service("cart", "10.96.0.1", "red")).unwrap();
    std::fs::write(dir.join("pay.yaml"), service("pay", "10.96.0.2", "red")).unwrap();
    // Hazards beside them: a FIFO, links in a loop (of files, and of a
    // directory to its parent), an endless device, bytes that are not UTF-8.
    nix::unistd::mkfifo(&dir.join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink("b.yaml", dir.join("a.yaml")).unwrap();
    std::os::unix::fs::symlink("a.yaml", dir.join("b.yaml")).unwrap();
    std::os::unix::fs::symlink("..", dir.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    std::fs::write(dir.join("latin1.yaml"), b"kind: Service # caf\xe9\n").unwrap();

    let handle = Arc::new(MeshHandle::default());
    let task = tokio::time::timeout(
        Duration::from_secs(10),
        ambit_mesh_source::start(&Source::Directory(dir.clone()), handle.clone()),
    )
    .await
    .expect("the source starts despite the bad files")
    .unwrap();
    assert_eq!(team(&handle.snapshot(), "cart").as_deref(), Some("red"));
    assert_eq!(team(&handle.snapshot(), "pay").as_deref(), Some("red"));

    // A file that becomes unreadable, or gains a document that cannot be
    // read even to name it, keeps what it held; the other files apply.
    std::fs::write(dir.join("cart.yaml"), b"\xff\xfe not text\n").unwrap();
    std::fs::write(
        dir.join("pay.yaml"),
        format!(
            "{}---\nkind: [unclosed\n",
            service("other", "10.96.0.3", "blue")
        ),
    )
    .unwrap();
    std::fs::write(dir.join("ship.yaml"), service("ship", "10.96.0.4", "green")).unwrap();
    until(&handle, "the good file", |m| {
        team(m, "ship").as_deref() == Some("green")
    })
    .await;
    let mesh = handle.snapshot();
    assert_eq!(
        team(&mesh, "cart").as_deref(),
        Some("red"),
        "kept from the unreadable file"
    );
    assert_eq!(
        team(&mesh, "pay").as_deref(),
        Some("red"),
        "kept by the broken file"
    );
    assert_eq!(
        team(&mesh, "other").as_deref(),
        Some("blue"),
        "read from the broken file"
    );

    // Fixed, each reads whole again: what it no longer defines goes.
    std::fs::write(dir.join("cart.yaml"), service("cart", "10.96.0.1", "gold")).unwrap();
    std::fs::write(dir.join("pay.yaml"), service("other", "10.96.0.3", "blue")).unwrap();
    until(&handle, "the fixed files", |m| {
        team(m, "cart").as_deref() == Some("gold") && team(m, "pay").is_none()
    })
    .await;

    // A file being written (open, half of it there) is read once closed.
    let mut writer = std::fs::File::create(dir.join("cart.yaml")).unwrap();
    let text = service("cart", "10.96.0.1", "plum");
    use std::io::Write;
    writer
        .write_all(&text.as_bytes()[..text.len() / 2])
        .unwrap();
    writer.flush().unwrap();
    std::fs::write(dir.join("ship.yaml"), service("ship", "10.96.0.4", "black")).unwrap();
    until(&handle, "a change beside the half-written file", |m| {
        team(m, "ship").as_deref() == Some("black")
    })
    .await;
    // A rescan meanwhile must not read it either.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        team(&handle.snapshot(), "cart").as_deref(),
        Some("gold"),
        "half a file was applied"
    );
    writer
        .write_all(&text.as_bytes()[text.len() / 2..])
        .unwrap();
    drop(writer);
    until(&handle, "the file once closed", |m| {
        team(m, "cart").as_deref() == Some("plum")
    })
    .await;

    task.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}
