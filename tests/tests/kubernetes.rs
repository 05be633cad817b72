//! deploy/kubernetes/ offline: every manifest validates against the Kubernetes schemas
//! (PyPI's kubernetes-validate, which ships them, installed into a venv under target/),
//! every node's relay.toml in the ConfigMap passes `relay check` with the Secret's
//! credentials and a certificate laid out as the DaemonSet mounts them, and the DaemonSet
//! gives a drain the time it needs.
//!
//! Needs python3 (with venv) and PyPI the first time, and `target/debug/relay`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use relay_tests::{certs::TestCa, relay_binary, workspace_root};
use serde_json::Value;

/// Pinned, so that CI validates against the same schemas every run.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest Kubernetes the manifests are for (preStop `sleep` is beta, on by default,
/// from 1.30), and the newest the package knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// Where the DaemonSet mounts the ConfigMap, the credentials Secret and the TLS Secret:
/// the node configs name the latter two relative to the first.
const MOUNTS: &[(&str, &str)] = &[
    ("config", "/etc/relay/config"),
    ("credentials", "/etc/relay/credentials"),
    ("tls", "/etc/relay/tls"),
];

fn manifests_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("read deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

/// The venv with kubernetes-validate (and PyYAML, its dependency), made once.
fn venv() -> PathBuf {
    static MADE: Mutex<()> = Mutex::new(());
    let _once = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = relay_binary()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("kubernetes-validate");
    let stamp = dir.join("installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == KUBERNETES_VALIDATE) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir));
    run(Command::new(dir.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]));
    std::fs::write(&stamp, KUBERNETES_VALIDATE).expect("write venv stamp");
    dir
}

/// Runs `cmd`; its stdout, or a panic with its output.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Every document of every manifest, as JSON (read by the venv's PyYAML).
fn documents() -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
                  print(json.dumps(docs))";
    let out = run(Command::new(venv().join("bin/python"))
        .args(["-c", script])
        .args(manifests()));
    serde_json::from_str(&out).expect("documents as JSON")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let bin = venv().join("bin/kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let out = run(Command::new(&bin)
            .args(["--strict", "--kubernetes-version", version])
            .args(manifests()));
        eprint!("{out}");
    }
}

#[test]
fn every_node_config_passes_relay_check_as_mounted() {
    let docs = documents();
    let config = find(&docs, "ConfigMap", "relay-config");
    let secret = find(&docs, "Secret", "relay-credentials");
    let daemonset = find(&docs, "DaemonSet", "relay");

    // The pod's mounts, in a temp dir: config/NODE.toml, credentials/…, tls/tls.{crt,key}.
    let root = std::env::temp_dir().join(format!(
        "relay-kubernetes-{}",
        relay_tests::netns::unique_id()
    ));
    let _cleanup = RemoveOnDrop(root.clone());
    let write = |dir: &str, name: &str, text: &str| {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).expect("create mount dir");
        std::fs::write(d.join(name), text).expect("write mounted file");
    };
    for (name, text) in secret["stringData"].as_object().expect("stringData") {
        write("credentials", name, text.as_str().expect("a string"));
    }
    let leaf = TestCa::new("kubernetes test CA").leaf("relay", &["turn.example.org"]);
    write("tls", "tls.crt", &leaf.chain_pem);
    write("tls", "tls.key", &leaf.key_pem);

    let nodes = config["data"].as_object().expect("ConfigMap data");
    assert!(!nodes.is_empty());
    let mut max_drain = 0;
    for (name, text) in nodes {
        assert!(name.ends_with(".toml"), "{name}: keys are NODE.toml");
        let text = text.as_str().expect("a string");
        write("config", name, text);
        let path = root.join("config").join(name);
        let out = Command::new(relay_binary())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run relay check");
        assert!(
            out.status.success(),
            "relay check refused {name}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let loaded = relay_user::config::load(&path).expect("checked already");
        assert!(
            !loaded.shared_secrets.is_empty(),
            "{name}: the Secret's shared secrets did not arrive"
        );
        max_drain = max_drain.max(loaded.drain_timeout.as_secs());
    }

    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        serde_json::json!(["serve", "--config", "/etc/relay/config/$(NODE_NAME).toml"])
    );
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    for (volume, path) in MOUNTS {
        assert!(
            mounts
                .iter()
                .any(|m| m["name"] == *volume && m["mountPath"] == *path),
            "volume {volume} is not mounted at {path}: {mounts:?}"
        );
    }
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > pre_stop + max_drain,
        "terminationGracePeriodSeconds {grace} must be longer than preStop {pre_stop} s \
         plus drain_timeout {max_drain} s, or SIGKILL cuts the drain short"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
