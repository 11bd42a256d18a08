//! The clone's connection details for the application: a ConfigMap the clone owns, written only
//! once the clone is Ready (so a Deployment using it through `envFrom` cannot start against a
//! clone that is not initialized) and deleted with the clone's data.

use crate::api::{DatabaseClone, DatabaseStore, StoreSpec};
use crate::controller::{Error, FIELD_MANAGER};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::BTreeMap;

/// The label on each connection ConfigMap, naming its clone.
pub const CLONE_LABEL: &str = "slatedb.io/clone";

/// The ConfigMap's name: `spec.connection.configMapName`, else `<clone>-slatedb`.
pub fn config_map_name(object: &DatabaseClone) -> String {
    object
        .spec
        .connection
        .as_ref()
        .and_then(|c| c.config_map_name.clone())
        .unwrap_or_else(|| format!("{}-slatedb", object.name_any()))
}

/// What the application needs to open the clone: where its store is, the path, the WAL store,
/// and the name (never the values) of the Secret with the store's credentials. For a
/// DatabaseStore, `administrator_store` is its spec (URL and WAL URL); its credentials are the
/// administrator's and are not named.
pub fn connection_data(
    object: &DatabaseClone,
    store: &StoreSpec,
    administrator_store: Option<&DatabaseStore>,
) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    let (url, wal_url) = match (administrator_store, &store.url) {
        (Some(admin), _) => (Some(&admin.spec.url), admin.spec.wal_url.as_ref()),
        (None, url) => (url.as_ref(), store.wal_url.as_ref()),
    };
    if let Some(url) = url {
        data.insert("SLATEDB_STORE_URL".into(), url.0.clone());
    }
    data.insert("SLATEDB_PATH".into(), object.spec.target.path.0.clone());
    if let Some(wal_url) = wal_url {
        data.insert("SLATEDB_WAL_URL".into(), wal_url.0.clone());
    }
    if let Some(secret) = &store.secret_ref {
        data.insert("SLATEDB_STORE_SECRET".into(), secret.name.clone());
    }
    if let Some(name) = &store.store_ref {
        data.insert("SLATEDB_STORE_REF".into(), name.clone());
    }
    data
}

/// Writes the clone's ConfigMap, owned by the clone: created, or when one of that name exists and
/// is the clone's (an earlier try), written by server-side apply. A ConfigMap of that name that is
/// not the clone's is left alone, and the clone says so.
pub async fn publish(client: &Client, object: &DatabaseClone) -> Result<(), Error> {
    let Some(store) = object.status.as_ref().and_then(|s| s.store.as_ref()) else {
        return Ok(());
    };
    let administrator_store = match &store.store_ref {
        Some(name) => {
            Api::<DatabaseStore>::all(client.clone())
                .get_opt(name)
                .await?
        }
        None => None,
    };
    let namespace = object.namespace().unwrap_or_default();
    let name = config_map_name(object);
    let api = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([(CLONE_LABEL.into(), object.name_any())])),
            owner_references: object.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        data: Some(connection_data(object, store, administrator_store.as_ref())),
        ..Default::default()
    };
    // The usual case, a new clone, costs one request: the create.
    let create = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&create, &config_map).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    if let Some(existing) = api.get_opt(&name).await? {
        if !owned_by(&existing, object) {
            return Err(Error::Blocked(format!(
                "ConfigMap {namespace}/{name} exists and is not this clone's, so the connection \
                 details are not written; delete it or set spec.connection.configMapName"
            )));
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&config_map),
    )
    .await?;
    Ok(())
}

fn owned_by(config_map: &ConfigMap, object: &DatabaseClone) -> bool {
    let uid = object.uid().unwrap_or_default();
    config_map.owner_references().iter().any(|o| o.uid == uid)
}

/// Whether the clone's ConfigMap exists.
pub async fn exists(client: &Client, object: &DatabaseClone) -> Result<bool, Error> {
    let namespace = object.namespace().unwrap_or_default();
    Ok(Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .get_opt(&config_map_name(object))
        .await?
        .is_some())
}

/// Deletes the clone's ConfigMap, if it has one it owns.
pub async fn remove(client: &Client, object: &DatabaseClone) -> Result<(), Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let name = config_map_name(object);
    let Some(existing) = api.get_opt(&name).await? else {
        return Ok(());
    };
    if !owned_by(&existing, object) {
        return Ok(()); // someone else's ConfigMap of that name: not ours to delete
    }
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}
