//! The manifests under `examples/` (plain YAML files and kustomizations): each passes a server-side
//! dry run against the real kube-apiserver, and the nightly schedule, the PR clone and the kustomize
//! overlay hold the fields they are there to show. The Argo CD ApplicationSet's template, rendered
//! with a pull request's parameters the way its pull-request generator does, builds (kustomize, with
//! the Application's options) into objects that pass the dry run too, and are the plain overlay's.

use crate::support::{describe, documents, get, repo_path, run_tool, server_dry_run, TestEnv};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The examples for Argo CD: they need its CRDs, so they are rendered and checked by their own test.
const ARGO_CD_EXAMPLES: &str = "examples/argocd";

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
        if path == repo_path(ARGO_CD_EXAMPLES) {
            continue;
        }
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
        "examples/dr-copy.yaml",
        "examples/nightly-schedule.yaml",
        "examples/one-off-checkpoint.yaml",
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
        if what.contains("examples/nightly-schedule.yaml") {
            let schedule = get(&docs, "DatabaseCheckpointSchedule", "nightly");
            assert_eq!(schedule["spec"]["schedule"], "0 2 * * *");
            assert_eq!(schedule["spec"]["retention"]["keepLast"], 7);
            assert_eq!(schedule["spec"]["retention"]["keepWithin"], "168h");
            let template = &schedule["spec"]["checkpointTemplate"]["spec"];
            assert_eq!(template["database"]["store"]["ref"], "shared-s3");
        }
        if what.contains("examples/one-off-checkpoint.yaml") {
            let checkpoint = get(&docs, "DatabaseCheckpoint", "before-migration");
            assert_eq!(checkpoint["spec"]["lifetime"], "48h");
            assert_eq!(checkpoint["spec"]["database"]["store"]["ref"], "shared-s3");
        }
        if what.contains("examples/database-store.yaml") {
            let store = get(&docs, "DatabaseStore", "shared-s3");
            assert!(store["spec"]["url"].as_str().unwrap().starts_with("s3://"));
            assert!(store["spec"]["credentials"]["secretRef"]["name"].is_string());
            assert_eq!(store["spec"]["writePrefixes"][0], "{namespace}");
        }
        if what.contains("examples/dr-copy.yaml") {
            let copy = get(&docs, "DatabaseCopy", "orders-dr");
            assert_eq!(copy["spec"]["source"]["scheduleRef"]["name"], "nightly");
            assert_eq!(copy["spec"]["target"]["store"]["ref"], "dr-s3");
            assert_eq!(copy["spec"]["job"]["shares"], 4);
        }
        if what.contains("examples/pr-clone.yaml") {
            let clone = &docs[0];
            assert_eq!(clone["spec"]["expireAfter"], "72h");
            assert_eq!(clone["spec"]["source"]["scheduleRef"]["name"], "nightly");
        }
        if what.contains("overlays/pr-1234") {
            assert_eq!(docs.len(), 2, "{what}");
            assert_preview(&docs, "1234", "3f2c1a9e8b7d6c5f4e3d2c1b0a9f8e7d6c5b4a39");
        }
    }
    env.cleanup().await;
}

/// A pull request's preview: the clone `orders-pr-<number>` of the nightly schedule at
/// `clones/pr-<number>` that expires by its data, and the application of the pull request's commit,
/// labelled and selected by the pull request, reading the clone's ConfigMap in both containers.
fn assert_preview(docs: &[Value], number: &str, commit: &str) {
    let clone = get(docs, "DatabaseClone", &format!("orders-pr-{number}"));
    assert_eq!(
        clone["spec"]["source"]["scheduleRef"]["name"], "nightly",
        "not renamed"
    );
    assert_eq!(
        clone["spec"]["target"]["path"],
        format!("clones/pr-{number}")
    );
    assert_eq!(clone["spec"]["expirationPolicy"], "ExpireData");
    assert!(clone["spec"]["expireAfter"].is_string());
    assert_eq!(
        clone["metadata"]["labels"]["slatedb.io/pull-request"],
        number
    );
    let app = get(docs, "Deployment", &format!("orders-app-pr-{number}"));
    let selector = &app["spec"]["selector"]["matchLabels"];
    assert_eq!(selector["slatedb.io/pull-request"], number, "{app}");
    let pod = &app["spec"]["template"]["spec"];
    let config_map = format!("orders-pr-{number}-slatedb");
    for container in [&pod["initContainers"][0], &pod["containers"][0]] {
        assert_eq!(
            container["envFrom"][0]["configMapRef"]["name"],
            config_map.as_str(),
            "{container}"
        );
    }
    assert_eq!(
        pod["containers"][0]["image"],
        format!("example.com/orders-app:{commit}")
    );
    let wait = &pod["initContainers"][0];
    assert_eq!(wait["command"], json!(["slatedb-operator", "wait"]));
    let args: Vec<&str> = wait["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--path", "$(SLATEDB_PATH)"]),
        "{args:?}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--store", "$(SLATEDB_STORE_URL)"]),
        "{args:?}"
    );
}

/// Replaces each `{{name}}` in every string of `value` with the parameter's value, as the
/// ApplicationSet controller renders a template (its default, non-Go-template syntax); a `{{…}}`
/// left over names a parameter the generator does not give.
fn render(value: &Value, parameters: &BTreeMap<&str, String>) -> Value {
    match value {
        Value::String(text) => {
            let mut rendered = text.clone();
            for (name, parameter) in parameters {
                rendered = rendered.replace(&format!("{{{{{name}}}}}"), parameter);
            }
            assert!(!rendered.contains("{{"), "unknown parameter in {text:?}");
            Value::String(rendered)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, parameters)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, parameters)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `to` relative to the directory `from` (kustomize takes no absolute resource paths).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let (from, to): (Vec<Component>, Vec<Component>) =
        (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path: PathBuf = from[common..].iter().map(|_| "..").collect();
    path.extend(&to[common..]);
    path
}

/// What Argo CD deploys for an Application whose source is a kustomization with kustomize options:
/// the source directory built with the options applied (as `kustomize edit` applies them), by
/// `kubectl kustomize` of an overlay that holds them. Every option the example uses is applied;
/// any other fails the test rather than being ignored.
fn build_application(application: &Value) -> String {
    let source = &application["spec"]["source"];
    let base = repo_path(source["path"].as_str().unwrap());
    let overlay = tempfile::tempdir().unwrap();
    let mut kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [relative_path(overlay.path(), &base).display().to_string()],
    });
    for (option, value) in source["kustomize"].as_object().unwrap() {
        match option.as_str() {
            "nameSuffix" | "namePrefix" | "commonLabels" | "patches" => {
                kustomization[option] = value.clone();
            }
            "images" => {
                kustomization["images"] = value
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|image| {
                        let (name, tag) = image.as_str().unwrap().rsplit_once(':').unwrap();
                        json!({"name": name, "newTag": tag})
                    })
                    .collect();
            }
            other => panic!("the test does not apply the kustomize option {other:?}"),
        }
    }
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        serde_yaml::to_string(&kustomization).unwrap(),
    )
    .unwrap();
    let path = overlay.path().display().to_string();
    let output = run_tool("E2E_KUBECTL", &["kustomize", &path], None);
    assert!(
        output.status.success(),
        "{}",
        describe(&format!("kubectl kustomize of {kustomization}"), &output)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_application_set_stamps_a_clone_and_its_application_per_pull_request() {
    let env = TestEnv::new("examples-argocd").await;
    let file = repo_path(&format!("{ARGO_CD_EXAMPLES}/pr-previews.yaml"));
    let docs = documents(&std::fs::read_to_string(&file).unwrap());
    let application_set = get(&docs, "ApplicationSet", "orders-previews");
    assert_eq!(application_set["apiVersion"], "argoproj.io/v1alpha1");
    let generator = &application_set["spec"]["generators"][0]["pullRequest"];
    assert!(generator["github"]["repo"].is_string(), "{generator}");
    let template = &application_set["spec"]["template"];

    // Two pull requests, with the parameters the pull-request generator gives.
    let pull_request = |number: &str, branch: &str, head_sha: &str| {
        BTreeMap::from([
            ("number", number.to_string()),
            ("branch", branch.to_string()),
            ("branch_slug", branch.replace('/', "-")),
            ("target_branch", "main".to_string()),
            ("target_branch_slug", "main".to_string()),
            ("head_sha", head_sha.to_string()),
            ("head_short_sha", head_sha[..8].to_string()),
            ("head_short_sha_7", head_sha[..7].to_string()),
            ("author", "octocat".to_string()),
        ])
    };
    let overlay_commit = "3f2c1a9e8b7d6c5f4e3d2c1b0a9f8e7d6c5b4a39";
    let mut rendered = Vec::new();
    for (number, branch, head_sha) in [
        (
            "42",
            "feature/faster-orders",
            "0123456789abcdef0123456789abcdef01234567",
        ),
        ("1234", "fix/rounding", overlay_commit),
    ] {
        let application = render(template, &pull_request(number, branch, head_sha));
        assert_eq!(
            application["metadata"]["name"],
            format!("orders-pr-{number}")
        );
        assert_eq!(application["spec"]["source"]["targetRevision"], head_sha);
        assert_eq!(application["spec"]["destination"]["namespace"], "previews");
        let yaml = build_application(&application);
        let objects = documents(&yaml);
        assert_eq!(objects.len(), 2, "{yaml}");
        assert_preview(&objects, number, head_sha);
        server_dry_run(
            Some(&env.namespace),
            &yaml,
            &format!("the ApplicationSet's objects for pull request {number}"),
        );
        rendered.push(objects);
    }
    // Two pull requests never share a clone, a target or a ConfigMap.
    assert_ne!(rendered[0], rendered[1]);

    // Pull request 1234 gets exactly what the plain kustomize overlay renders.
    let overlay = repo_path("examples/kustomize/overlays/pr-1234")
        .display()
        .to_string();
    let output = run_tool("E2E_KUBECTL", &["kustomize", &overlay], None);
    assert!(
        output.status.success(),
        "{}",
        describe("kubectl kustomize", &output)
    );
    let by_kind = |objects: &[Value]| -> BTreeMap<String, Value> {
        objects
            .iter()
            .map(|o| (o["kind"].as_str().unwrap().to_string(), o.clone()))
            .collect()
    };
    assert_eq!(
        by_kind(&rendered[1]),
        by_kind(&documents(&String::from_utf8(output.stdout).unwrap())),
        "the ApplicationSet and the overlay differ for pull request 1234"
    );
    env.cleanup().await;
}
