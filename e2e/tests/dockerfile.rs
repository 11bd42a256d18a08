//! The Dockerfile: a multi-stage build of the crate's binary (`cargo build --release --locked` on a
//! Rust image new enough for the crate), a distroless runtime stage that runs `<binary> run` as the
//! non-root user the chart expects, and a `.dockerignore` that keeps `target/` and `.git` out.

use crate::chart::CHART;
use crate::support::repo_path;
use std::collections::BTreeSet;

/// The crate's binary name: the first `[[bin]]` table's `name`, else `[package]`'s.
fn cargo_bin_name(cargo_toml: &str) -> String {
    let mut section = String::new();
    let mut package_name = None;
    for line in cargo_toml.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "name" {
            continue;
        }
        let value = value.trim().trim_matches('"').to_string();
        match section.as_str() {
            "[[bin]]" => return value,
            "[package]" => package_name = Some(value),
            _ => {}
        }
    }
    package_name.expect("Cargo.toml names its package")
}

fn cargo_rust_version(cargo_toml: &str) -> Option<(u32, u32)> {
    cargo_toml.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "rust-version").then(|| major_minor(value.trim().trim_matches('"')))?
    })
}

fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Dockerfile instructions as (INSTRUCTION, arguments), continuation lines joined, comments dropped.
pub(crate) fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = vec![];
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(stripped) = trimmed.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        instructions.push((instruction.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    instructions
}

#[test]
fn dockerfile_builds_and_runs_the_crates_binary() {
    let cargo_toml = std::fs::read_to_string(repo_path("Cargo.toml")).unwrap();
    let bin = cargo_bin_name(&cargo_toml);
    assert_eq!(
        bin, "slatedb-operator",
        "the chart and docs expect this binary name"
    );
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let instructions = dockerfile_instructions(&dockerfile);

    // Stages: the last FROM starts the runtime stage.
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build");
    let (builder, runtime) = (
        &instructions[froms[0]..*froms.last().unwrap()],
        &instructions[*froms.last().unwrap()..],
    );

    // Builder: a Rust image at least as new as the crate's rust-version, `cargo build --release --locked`.
    let from_builder: Vec<&str> = builder[0].1.split_whitespace().collect();
    assert!(
        from_builder.len() == 3 && from_builder[1].eq_ignore_ascii_case("AS"),
        "the first stage is named: {:?}",
        builder[0]
    );
    let (builder_image, stage) = (from_builder[0], from_builder[2]);
    let tag = builder_image
        .strip_prefix("rust:")
        .unwrap_or_else(|| panic!("the builder is an official rust image: {builder_image}"));
    if let (Some(needed), Some(have)) = (cargo_rust_version(&cargo_toml), major_minor(tag)) {
        assert!(
            have >= needed,
            "{builder_image} is older than rust-version {needed:?}"
        );
    }
    let builds: Vec<&String> = builder
        .iter()
        .filter(|(i, args)| i == "RUN" && args.contains("cargo build"))
        .map(|(_, args)| args)
        .collect();
    assert_eq!(builds.len(), 1, "one cargo build: {builds:?}");
    let build: Vec<&str> = builds[0].split_whitespace().collect();
    assert!(
        build.contains(&"--release") && build.contains(&"--locked"),
        "{}",
        builds[0]
    );
    if let Some(at) = build.iter().position(|a| *a == "--bin") {
        assert_eq!(build.get(at + 1), Some(&bin.as_str()), "{}", builds[0]);
    }
    let workdir = builder
        .iter()
        .rev()
        .filter(|(i, _)| i == "WORKDIR")
        .map(|(_, dir)| dir.trim_end_matches('/'))
        .next()
        .expect("the builder sets WORKDIR");

    // Runtime: distroless with glibc (the binary links it dynamically), the binary, nonroot, `<bin> run`.
    assert_eq!(runtime[0].1, "gcr.io/distroless/cc-debian12:nonroot");
    let copy = format!("--from={stage} {workdir}/target/release/{bin} /usr/local/bin/{bin}");
    assert!(
        runtime.iter().any(|(i, args)| i == "COPY" && *args == copy),
        "the runtime stage should `COPY {copy}`"
    );
    let user = runtime
        .iter()
        .rev()
        .filter(|(i, _)| i == "USER")
        .map(|(_, user)| user.as_str())
        .next()
        .expect("the runtime stage sets USER");
    assert_eq!(user, "65532:65532");
    let entrypoint = runtime
        .iter()
        .rev()
        .filter(|(i, _)| i == "ENTRYPOINT")
        .map(|(_, args)| args.as_str())
        .next()
        .expect("the runtime stage sets ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).unwrap_or_else(|e| {
        panic!("ENTRYPOINT is not an exec-form JSON array ({e}): {entrypoint}")
    });
    assert_eq!(entrypoint, vec![bin.clone(), "run".to_string()]);

    // The chart runs the image as the same non-root user.
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_path(&format!("{CHART}/values.yaml"))).unwrap(),
    )
    .unwrap();
    let uid = user.split(':').next().unwrap();
    assert_eq!(
        values["podSecurityContext"]["runAsUser"]
            .as_u64()
            .map(|u| u.to_string())
            .as_deref(),
        Some(uid),
        "values.yaml podSecurityContext.runAsUser should match the image's USER"
    );

    let dockerignore = std::fs::read_to_string(repo_path(".dockerignore")).unwrap();
    let ignored: BTreeSet<&str> = dockerignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();
    assert!(
        ignored.contains("target") && ignored.contains(".git"),
        "{dockerignore}"
    );
}
