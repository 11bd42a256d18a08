//! The CEL rules of both CRDs, evaluated client-side with kube's CEL interpreter. The real API
//! server has the final word; the e2e suite repeats the important cases there.

use super::{DatabaseCheckpoint, DatabaseClone};
use kube::core::cel::Validator;
use kube::CustomResourceExt;
use serde_json::{json, Value};

fn schema_of(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

/// The messages of every failed rule, or an empty list when the object passes.
fn cel_failures(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(schema, object, old) {
        Ok(()) => vec![],
        Err(errors) => errors
            .as_slice()
            .iter()
            .map(|e| e.message.clone())
            .collect(),
    }
}

fn clone_obj(spec: Value) -> Value {
    json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
           "metadata": {"name": "c", "namespace": "ns"}, "spec": spec})
}

fn checkpoint_obj(spec: Value) -> Value {
    json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint",
           "metadata": {"name": "cp", "namespace": "ns"}, "spec": spec})
}

fn valid_clone_spec() -> Value {
    json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/pr-1"}})
}

fn valid_checkpoint_spec() -> Value {
    json!({"database": {"store": {"url": "s3://bucket/prefix"}, "path": "prod/orders"}})
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    base.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert(key.to_string(), value);
    base
}

fn assert_rejected(schema: &Value, object: &Value, old: Option<&Value>, expected: &str) {
    let failures = cel_failures(schema, object, old);
    assert!(
        failures.iter().any(|m| m.contains(expected)),
        "expected a failure mentioning {expected:?} for {object}, got {failures:?}"
    );
}

#[test]
fn valid_objects_pass() {
    let clone = schema_of(DatabaseClone::crd());
    let checkpoint = schema_of(DatabaseCheckpoint::crd());
    for spec in [
        valid_clone_spec(),
        json!({"source": {"database": {"store": {"url": "file:///data"}, "path": "prod"},
                          "keyRange": {"start": "a", "end": "m"}},
               "target": {"path": "prod-copy"}, "expireAfter": "24h", "verify": "Content"}),
        json!({"source": {"checkpointRef": {"name": "x"}, "keyRange": {"start": "base64:AAE=", "end": "zz"}},
               "target": {"path": "a/b.c/d_e"}}),
    ] {
        assert_eq!(
            cel_failures(&clone, &clone_obj(spec.clone()), None),
            Vec::<String>::new(),
            "{spec}"
        );
    }
    for spec in [
        valid_checkpoint_spec(),
        with(
            valid_checkpoint_spec(),
            "/source",
            json!({"mode": "Adopt", "adopt": {"name": "app-nightly"}}),
        ),
        with(
            valid_checkpoint_spec(),
            "/source",
            json!({"mode": "Adopt", "adopt": {"id": "0195d7a2-3c4f-7e21-9a0b-1c2d3e4f5a6b"}}),
        ),
        with(valid_checkpoint_spec(), "/lifetime", json!("1h30m")),
    ] {
        assert_eq!(
            cel_failures(&checkpoint, &checkpoint_obj(spec.clone()), None),
            Vec::<String>::new(),
            "{spec}"
        );
    }
}

#[test]
fn bad_clones_are_rejected_with_a_message_naming_the_problem() {
    let schema = schema_of(DatabaseClone::crd());
    let database = json!({"store": {"url": "file:///data"}, "path": "prod"});
    let cases: Vec<(Value, &str)> = vec![
        (
            with(
                valid_clone_spec(),
                "/source",
                json!({"checkpointRef": {"name": "a"}, "database": database}),
            ),
            "exactly one of checkpointRef, scheduleRef or database",
        ),
        (
            with(valid_clone_spec(), "/source", json!({})),
            "exactly one of checkpointRef, scheduleRef or database",
        ),
        (
            with(valid_clone_spec(), "/target", json!({"path": ""})),
            "must not be empty",
        ),
        (
            with(valid_clone_spec(), "/target", json!({"path": "/abs"})),
            "no leading '/'",
        ),
        (
            with(valid_clone_spec(), "/target", json!({"path": "a/../b"})),
            "'..' segments",
        ),
        (
            with(valid_clone_spec(), "/target", json!({"path": ".."})),
            "'..' segments",
        ),
        (
            with(valid_clone_spec(), "/target", json!({"path": "a//b"})),
            "empty segments",
        ),
        (
            json!({"source": {"database": database}, "target": {"path": "prod"}}),
            "must differ from the source database path",
        ),
        (
            with(valid_clone_spec(), "/expireAfter", json!("3 days")),
            "must be a duration",
        ),
        (
            with(valid_clone_spec(), "/expireAfter", json!("500ms")),
            "between 1s and 87600h",
        ),
        (
            with(valid_clone_spec(), "/expireAfter", json!("100000h")),
            "between 1s and 87600h",
        ),
        (
            with(
                valid_clone_spec(),
                "/source",
                json!({"checkpointRef": {"name": "a"}, "keyRange": {"start": "base64:!!"}}),
            ),
            "standard padded base64",
        ),
        (
            with(
                valid_clone_spec(),
                "/source",
                json!({"checkpointRef": {"name": "a"}, "keyRange": {"start": "m", "end": "a"}}),
            ),
            "must sort before",
        ),
        (
            json!({"source": {"database": {"store": {"url": "ftp://x"}, "path": "p"}}, "target": {"path": "q"}}),
            "object-store URL",
        ),
    ];
    for (spec, expected) in cases {
        assert_rejected(&schema, &clone_obj(spec), None, expected);
    }
}

#[test]
fn clone_source_and_target_are_immutable() {
    let schema = schema_of(DatabaseClone::crd());
    let old = clone_obj(valid_clone_spec());
    let new_target = clone_obj(with(
        valid_clone_spec(),
        "/target",
        json!({"path": "elsewhere"}),
    ));
    assert_rejected(&schema, &new_target, Some(&old), "spec.target is immutable");
    let new_source = clone_obj(with(
        valid_clone_spec(),
        "/source",
        json!({"checkpointRef": {"name": "other"}}),
    ));
    assert_rejected(&schema, &new_source, Some(&old), "spec.source is immutable");
    let new_verify = clone_obj(with(valid_clone_spec(), "/verify", json!("Content")));
    assert_eq!(
        cel_failures(&schema, &new_verify, Some(&old)),
        Vec::<String>::new()
    );
}

#[test]
fn bad_checkpoints_are_rejected_with_a_message_naming_the_problem() {
    let schema = schema_of(DatabaseCheckpoint::crd());
    let cases: Vec<(Value, &str)> = vec![
        (
            with(valid_checkpoint_spec(), "/source", json!({"mode": "Adopt"})),
            "only when, source.mode is Adopt",
        ),
        (
            with(
                valid_checkpoint_spec(),
                "/source",
                json!({"mode": "Create", "adopt": {"name": "x"}}),
            ),
            "only when, source.mode is Adopt",
        ),
        (
            with(
                valid_checkpoint_spec(),
                "/source",
                json!({"mode": "Adopt", "adopt": {}}),
            ),
            "exactly one of id or name",
        ),
        (
            with(
                valid_checkpoint_spec(),
                "/source",
                json!({"mode": "Adopt", "adopt": {"id": "nope"}}),
            ),
            "must be a UUID",
        ),
        (
            with(valid_checkpoint_spec(), "/lifetime", json!("forever")),
            "must be a duration",
        ),
        (
            json!({"database": {"store": {"url": "s3://b"}, "path": "x/../../etc"}}),
            "'..' segments",
        ),
    ];
    for (spec, expected) in cases {
        assert_rejected(&schema, &checkpoint_obj(spec), None, expected);
    }
    let old = checkpoint_obj(valid_checkpoint_spec());
    let moved = checkpoint_obj(
        json!({"database": {"store": {"url": "s3://bucket/prefix"}, "path": "other"}}),
    );
    assert_rejected(&schema, &moved, Some(&old), "spec.database is immutable");
}

#[test]
fn key_bounds_decode_text_and_base64() {
    use crate::api::{KeyBound, KeyRange};
    use bytes::Bytes;
    use std::ops::Bound;
    assert_eq!(KeyBound("abc".into()).bytes(), Ok(Bytes::from("abc")));
    assert_eq!(
        KeyBound("base64:AAH/".into()).bytes(),
        Ok(Bytes::from(vec![0u8, 1, 255]))
    );
    assert_eq!(
        KeyBound("base64:/w==".into()).bytes(),
        Ok(Bytes::from(vec![255u8]))
    );
    assert!(KeyBound("base64:!!!!".into()).bytes().is_err());
    let range = |start: Option<&str>, end: Option<&str>| KeyRange {
        start: start.map(|s| KeyBound(s.into())),
        end: end.map(|s| KeyBound(s.into())),
    };
    assert_eq!(
        range(Some("a"), Some("base64:/w==")).bounds(),
        Ok((
            Bound::Included(Bytes::from("a")),
            Bound::Excluded(Bytes::from(vec![255u8]))
        ))
    );
    assert_eq!(
        range(None, None).bounds(),
        Ok((Bound::Unbounded, Bound::Unbounded))
    );
    let empty = range(Some("base64:YQ=="), Some("a")).bounds().unwrap_err();
    assert!(empty.contains("is empty"), "{empty}");
    assert!(range(Some("base64:eg=="), Some("base64:YQ=="))
        .bounds()
        .is_err());
}

#[test]
fn a_start_record_stands_for_an_empty_status_and_never_claims_more_than_a_start() {
    use crate::api::{DatabaseCloneStatus, START_RECORD_ANNOTATION};
    let mut clone: DatabaseClone = serde_json::from_value(with(
        clone_obj(json!({"source": {"scheduleRef": {"name": "nightly"}},
                         "target": {"path": "clones/pr-1"}})),
        "/metadata/annotations",
        // A record as anyone editing the object could write it: it claims Ready.
        json!({START_RECORD_ANNOTATION: json!({
            "attempts": 1, "sourceCheckpoint": "nightly-1", "store": {"url": "s3://b/p"},
            "phase": "Ready", "connectionConfigMap": "c-slatedb",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]
        }).to_string()}),
    ))
    .unwrap();
    let recorded = clone.recorded_status().unwrap().into_owned();
    assert_eq!(recorded.attempts, Some(1));
    assert_eq!(recorded.store.unwrap().url.unwrap().0, "s3://b/p");
    assert!(recorded.conditions.is_empty() && recorded.phase.is_none());
    assert!(recorded.connection_config_map.is_none());
    assert_eq!(clone.source_checkpoint().as_deref(), Some("nightly-1"));

    // A written status is what counts, however old the record.
    clone.status = Some(DatabaseCloneStatus {
        source_checkpoint: Some("nightly-2".into()),
        ..Default::default()
    });
    assert_eq!(clone.source_checkpoint().as_deref(), Some("nightly-2"));
    assert!(clone.recorded_status().unwrap().store.is_none());

    // A record that does not parse is none.
    clone.status = None;
    clone
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(START_RECORD_ANNOTATION.into(), "{not json".into());
    assert!(clone.recorded_status().is_none());
    assert!(clone.source_checkpoint().is_none());
}
