//! The image `e2e/build-image.sh` builds without Docker or a registry: an OCI layout whose config
//! says what the Dockerfile says (binary, user, entrypoint, exposed port), whose layer holds the
//! crate's binary, the libraries it links and the CA certificates, and in which the binary runs
//! as uid 65532 with nothing from the host.

use crate::dockerfile::dockerfile_instructions;
use crate::support::{describe, repo_path};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// The blob of `descriptor` in the OCI layout at `layout`.
fn blob(layout: &Path, descriptor: &Value) -> std::path::PathBuf {
    let digest = descriptor["digest"].as_str().unwrap();
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let output = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("tar -xf", &output));
}

#[test]
fn the_image_built_here_matches_the_dockerfile_and_runs_as_nonroot() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    let built = Command::new(repo_path("e2e/build-image.sh"))
        .arg(&archive)
        .env("IMAGE_BINARY", env!("CARGO_BIN_EXE_slatedb-operator"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        describe("e2e/build-image.sh", &built)
    );

    let layout = dir.path().join("layout");
    untar(&archive, &layout);
    assert_eq!(
        json_file(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json_file(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "docker.io/library/slatedb-operator:e2e"
    );
    let manifest = json_file(&blob(&layout, entry));
    let config = json_file(&blob(&layout, &manifest["config"]));

    // The config says what the Dockerfile's runtime stage says.
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let instructions = dockerfile_instructions(&dockerfile);
    let last_from = instructions.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let runtime = &instructions[last_from..];
    let value = |name: &str| {
        runtime
            .iter()
            .find(|(i, _)| i == name)
            .map(|(_, args)| args.clone())
            .unwrap_or_else(|| panic!("the Dockerfile's runtime stage has no {name}"))
    };
    assert_eq!(config["config"]["User"], value("USER"));
    let entrypoint: Value = serde_json::from_str(&value("ENTRYPOINT")).unwrap();
    assert_eq!(config["config"]["Entrypoint"], entrypoint);
    let port = format!("{}/tcp", value("EXPOSE"));
    assert!(
        config["config"]["ExposedPorts"].get(&port).is_some(),
        "{port} not exposed: {config}"
    );
    let copy = value("COPY");
    let destination = copy.split_whitespace().last().unwrap();
    assert_eq!(destination, "/usr/local/bin/slatedb-operator");

    // The layer: the binary the crate builds, byte for byte, the libraries it links, the CAs.
    let rootfs = dir.path().join("rootfs");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    untar(&blob(&layout, &layers[0]), &rootfs);
    let binary = std::fs::read(rootfs.join(destination.trim_start_matches('/'))).unwrap();
    let built_binary = std::fs::read(env!("CARGO_BIN_EXE_slatedb-operator")).unwrap();
    assert!(binary == built_binary, "the image holds another binary");
    assert!(
        std::fs::metadata(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
            .unwrap()
            .len()
            > 100_000,
        "no CA bundle"
    );
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");

    // It runs there, alone, as the image's user: nothing it needs comes from the host.
    let ran = Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&rootfs)
        .args(["/usr/local/bin/slatedb-operator", "run", "--help"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        describe("chroot … slatedb-operator run --help", &ran)
    );
    assert!(String::from_utf8_lossy(&ran.stdout).contains("--inline-stores"));
}
