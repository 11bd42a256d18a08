//! The CustomResourceDefinitions generated from the types in [`crate::api`], as committed under `crds/`,
//! and their installation into a cluster.

use crate::api::{
    DatabaseCheckpoint, DatabaseCheckpointSchedule, DatabaseClone, DatabaseCopy, DatabaseStore,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use std::time::Duration;

/// How long [`install_crds`] waits for each CRD to become Established.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);

/// Every CRD of the operator as `(file name, YAML)`, in a stable order.
pub fn generated() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    Ok(vec![
        (
            "databasecheckpoints.slatedb.io.yaml",
            serde_yaml::to_string(&DatabaseCheckpoint::crd())?,
        ),
        (
            "databasecheckpointschedules.slatedb.io.yaml",
            serde_yaml::to_string(&DatabaseCheckpointSchedule::crd())?,
        ),
        (
            "databaseclones.slatedb.io.yaml",
            serde_yaml::to_string(&DatabaseClone::crd())?,
        ),
        (
            "databasecopies.slatedb.io.yaml",
            serde_yaml::to_string(&DatabaseCopy::crd())?,
        ),
        (
            "databasestores.slatedb.io.yaml",
            serde_yaml::to_string(&DatabaseStore::crd())?,
        ),
    ])
}

/// Why [`install_crds`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("applying CRD {name}: {source}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("watching CRD {name} until it is Established: {source}")]
    Watch {
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
    #[error("CRD {name} not Established within {timeout:?}")]
    NotEstablished { name: String, timeout: Duration },
}

/// Server-side applies every CRD generated from the types, as `field_manager` and forcing
/// conflicts, and waits until the API server reports each one Established (it serves the kind).
pub async fn install_crds(client: &Client, field_manager: &str) -> Result<(), InstallError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        DatabaseCheckpoint::crd(),
        DatabaseCheckpointSchedule::crd(),
        DatabaseClone::crd(),
        DatabaseCopy::crd(),
        DatabaseStore::crd(),
    ] {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|source| InstallError::Apply {
            name: name.clone(),
            source,
        })?;
        tokio::time::timeout(
            ESTABLISHED_TIMEOUT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| InstallError::NotEstablished {
            name: name.clone(),
            timeout: ESTABLISHED_TIMEOUT,
        })?
        .map_err(|source| InstallError::Watch { name, source })?;
    }
    Ok(())
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
