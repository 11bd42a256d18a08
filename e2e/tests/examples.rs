//! The manifests under `examples/` (plain YAML files and kustomizations): each passes a server-side
//! dry run against the real kube-apiserver, and the nightly checkpoint, the PR clone and the
//! kustomize overlay hold the fields they are there to show.

use crate::support::{describe, documents, get, repo_path, run_tool, server_dry_run, TestEnv};
use std::path::{Path, PathBuf};

/// Manifests under `dir`: plain YAML files, and the output of `kubectl kustomize` for every directory
/// that holds a kustomization.yaml (whose own files are its inputs, not manifests).
fn example_manifests(dir: &Path, out: &mut Vec<(String, String)>) {
    if dir.join("kustomization.yaml").exists() {
        let path = dir.display().to_string();
        let output = run_tool("E2E_KUBECTL", &["kustomize", &path], None);
        assert!(
            output.status.success(),
            "{}",
            describe(&format!("kubectl kustomize {path}"), &output)
        );
        out.push((
            format!("kustomize {path}"),
            String::from_utf8(output.stdout).unwrap(),
        ));
        return;
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            example_manifests(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
}

#[tokio::test]
async fn examples_pass_server_side_dry_run() {
    let env = TestEnv::new("examples").await;
    let mut manifests = vec![];
    example_manifests(&repo_path("examples"), &mut manifests);
    let names: Vec<&str> = manifests.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "examples/database-store.yaml",
        "examples/nightly-checkpoint.yaml",
        "examples/pr-clone.yaml",
        "kustomize/overlays/pr-1234",
    ] {
        assert!(
            names.iter().any(|n| n.contains(expected)),
            "{expected} not among {names:?}"
        );
    }
    for (what, yaml) in &manifests {
        let docs = documents(yaml);
        assert!(!docs.is_empty(), "{what} is empty");
        server_dry_run(Some(&env.namespace), yaml, what);
        if what.contains("examples/nightly-checkpoint.yaml") {
            let checkpoint = get(&docs, "DatabaseCheckpoint", "nightly");
            assert_eq!(checkpoint["spec"]["lifetime"], "48h");
            assert_eq!(checkpoint["spec"]["database"]["store"]["ref"], "shared-s3");
        }
        if what.contains("examples/database-store.yaml") {
            let store = get(&docs, "DatabaseStore", "shared-s3");
            assert!(store["spec"]["url"].as_str().unwrap().starts_with("s3://"));
            assert!(store["spec"]["credentials"]["secretRef"]["name"].is_string());
            assert_eq!(store["spec"]["writePrefixes"][0], "{namespace}");
        }
        if what.contains("examples/pr-clone.yaml") {
            let clone = &docs[0];
            assert_eq!(clone["spec"]["expireAfter"], "72h");
            assert_eq!(clone["spec"]["source"]["checkpointRef"]["name"], "nightly");
        }
        if what.contains("overlays/pr-1234") {
            assert_eq!(docs.len(), 1, "{what}");
            let clone = &docs[0];
            assert_eq!(clone["kind"], "DatabaseClone");
            assert!(
                clone["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .contains("pr-1234"),
                "{clone}"
            );
            assert_eq!(clone["spec"]["target"]["path"], "clones/pr-1234");
            assert_eq!(
                clone["spec"]["source"]["checkpointRef"]["name"], "nightly",
                "not renamed"
            );
        }
    }
    env.cleanup().await;
}
