//! Databases written with each compression codec, through the operator: a checkpoint with a
//! content checksum, clones of it (Metadata and Content verification) and of the latest state,
//! an expiring clone, then deletion of all of them. Afterwards a SlateDB application reads the
//! parent and every clone back row for row, the parent's SST and WAL objects are byte-identical
//! to before, and its latest manifest still records each SST's codec.

use crate::clones::{
    assert_all_rows, condition, count_under, create, data_objects, wait_checkpoint_ready,
    wait_clone, wait_gone,
};
use crate::support::{eventually, Operator, StoreKind, TestEnv, TestStore};
use kube::api::DeleteParams;
use serde_json::json;
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseClone};
use slatedb_operator::engine::manifest_guard::CODECS;
use slatedb_operator::engine::sample::write_compressed_sample_db;
use std::time::Duration;

const KEYS: usize = 2_000;

on_both_stores!(every_codec_survives_checkpoint_clone_verify_and_delete);
async fn every_codec_survives_checkpoint_clone_verify_and_delete(kind: StoreKind) {
    let env = TestEnv::new("codecs").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    let checkpoints = env.api::<DatabaseCheckpoint>();
    let clones = env.api::<DatabaseClone>();
    for (_, codec, name) in CODECS {
        let parent = format!("prod/{name}");
        write_compressed_sample_db(&store.open(), &parent, KEYS, 3, codec)
            .await
            .unwrap();
        let before = data_objects(&store, &parent).await;
        assert!(before.keys().filter(|k| k.contains("/compacted/")).count() >= 3);

        let checkpoint = format!("nightly-{name}");
        create(
            &env,
            "DatabaseCheckpoint",
            &checkpoint,
            json!({"database": {"store": store.store_spec(), "path": parent}, "checksum": "Content"}),
        )
        .await;
        let ready = wait_checkpoint_ready(&env, &checkpoint).await;
        let checksum = ready.status.unwrap().checksum.unwrap();
        assert_eq!(checksum.content_root.map(|r| r.len()), Some(64), "{name}");

        let from_checkpoint = json!({"checkpointRef": {"name": checkpoint}});
        let latest = json!({"database": {"store": store.store_spec(), "path": parent}});
        let made = [
            (
                format!("meta-{name}"),
                from_checkpoint.clone(),
                "Metadata",
                None,
            ),
            (
                format!("content-{name}"),
                from_checkpoint.clone(),
                "Content",
                None,
            ),
            (format!("latest-{name}"), latest, "Content", None),
            (
                format!("expiring-{name}"),
                from_checkpoint,
                "Metadata",
                Some("3s"),
            ),
        ];
        for (clone, source, verify, expire_after) in &made {
            let mut spec = json!({
                "source": source, "target": {"path": format!("clones/{clone}")}, "verify": verify
            });
            if let Some(after) = expire_after {
                spec["expireAfter"] = json!(after);
                spec["expirationPolicy"] = json!("Delete");
            }
            create(&env, "DatabaseClone", clone, spec).await;
        }
        for (clone, _, verify, expire_after) in &made {
            if expire_after.is_some() {
                continue;
            }
            let ready = wait_clone(&env, clone, "Ready", Duration::from_secs(90)).await;
            assert_eq!(condition(&ready, "Verified").unwrap().0, "True", "{clone}");
            let checksum = ready.status.unwrap().checksum.unwrap();
            assert_eq!(
                checksum.content_root.is_some(),
                *verify == "Content",
                "{clone}"
            );
            assert_all_rows(&store, &format!("clones/{clone}"), KEYS).await;
        }

        // Expiry and deletion remove every clone's data and the checkpoints they left.
        let expiring = format!("expiring-{name}");
        eventually(
            Duration::from_secs(60),
            &format!("{expiring} expired and its data deleted"),
            || async {
                let left = count_under(&store, &format!("clones/{expiring}")).await;
                let expired = clones
                    .get_opt(&expiring)
                    .await
                    .unwrap()
                    .is_none_or(|c| condition(&c, "Expired").is_some_and(|e| e.0 == "True"));
                (left == 0 && expired).then_some(())
            },
        )
        .await;
        for (clone, ..) in &made {
            if clones.get_opt(clone).await.unwrap().is_some() {
                clones
                    .delete(clone, &DeleteParams::default())
                    .await
                    .unwrap();
            }
            wait_gone(&clones, clone, Duration::from_secs(60)).await;
            assert_eq!(
                count_under(&store, &format!("clones/{clone}")).await,
                0,
                "{clone}: data deleted"
            );
        }
        checkpoints
            .delete(&checkpoint, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&checkpoints, &checkpoint, Duration::from_secs(60)).await;

        let database = store.database(&parent);
        assert!(
            database.list_checkpoints(None).await.unwrap().is_empty(),
            "{name}: every checkpoint the operator added is gone"
        );
        assert!(
            data_objects(&store, &parent).await == before,
            "{name}: the parent's SST and WAL objects are byte-identical"
        );
        let manifest = database.latest_manifest().await.unwrap();
        assert!(manifest
            .all_sst_views()
            .all(|v| v.sst.info.compression_codec == codec));
        database.ensure_manifest_preserved().await.unwrap();
        assert_all_rows(&store, &parent, KEYS).await;
    }
    env.cleanup().await;
}
