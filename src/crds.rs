//! The CustomResourceDefinitions generated from the types in [`crate::api`], as committed under `crds/`.

use crate::api::{DatabaseCheckpoint, DatabaseClone};
use kube::CustomResourceExt;

/// Every CRD of the operator as `(file name, YAML)`, in a stable order.
pub fn generated() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    Ok(vec![
        (
            "databasecheckpoints.slatedb.io.yaml",
            serde_yaml::to_string(&DatabaseCheckpoint::crd())?,
        ),
        (
            "databaseclones.slatedb.io.yaml",
            serde_yaml::to_string(&DatabaseClone::crd())?,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn committed_crds_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for (file, yaml) in generated().unwrap() {
            let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
                panic!("crds/{file} missing ({e}); run `slatedb-operator crdgen`")
            });
            assert!(
                committed == yaml,
                "crds/{file} differs from the Rust types; run `cargo run -- crdgen` and commit the result"
            );
        }
        let mut on_disk: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        on_disk.sort();
        let mut expected: Vec<_> = generated()
            .unwrap()
            .into_iter()
            .map(|(f, _)| f.to_string())
            .collect();
        expected.sort();
        assert_eq!(
            on_disk, expected,
            "crds/ holds files the types do not generate"
        );
    }
}
