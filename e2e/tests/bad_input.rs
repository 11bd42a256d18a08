//! The fault suite's bad input: a table of malformed DatabaseCheckpoints and DatabaseClones, each
//! either rejected at admission with a message naming the problem or, once the operator has looked
//! at it, `Stalled` with a reason (or, for a reference to something that may still be created,
//! `Reconciling` with a reason). The operator must survive all of it: no panic, no restart.

use crate::clones::{objects_under, parent_and_checkpoint, PARENT};
use crate::crds::{checkpoint_manifest, clone_manifest, create_raw, dynamic_api};
use crate::support::{eventually, write_sample_db, Operator, StoreKind, TestEnv, TestStore};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Resource};
use serde_json::{json, Value};
use slatedb_operator::api::{
    DatabaseCheckpoint, DatabaseCheckpointSchedule, DatabaseClone, DatabaseCopy, DatabaseStore,
};
use std::time::{Duration, Instant};

/// A database that is not the source: clones must not overwrite it.
const OTHER_DB: &str = "other/db";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Checkpoint,
    Clone,
    /// A DatabaseStore (cluster-scoped): admission rows only.
    Store,
    Schedule,
    Copy,
}
// Short names keep the rows compact.
use Kind::{Checkpoint as Cp, Clone as Cl, Copy as Co, Schedule as Sc, Store as St};

/// How the manifest reaches the API server.
#[derive(Clone, Debug)]
enum Via {
    /// `POST`, as `kubectl create` does without client-side checks.
    Create,
    /// `POST` with `fieldValidation=Strict`, as `kubectl create`/`apply` send it by default.
    StrictCreate,
    /// `POST` of the manifest's JSON with the placeholder `@@` replaced by these raw bytes.
    RawBytes(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Outcome {
    /// Refused at admission (HTTP 4xx); the API server's message contains this.
    Rejected { contains: &'static str },
    /// Admitted; the operator sets `Stalled=True` with this reason and a non-empty message.
    Stalled { reason: &'static str },
    /// Admitted; a reference to an object that may still appear: `Reconciling=True` with this
    /// reason, never `Stalled`, and the message says what is missing.
    Reconciling {
        reason: &'static str,
        contains: String,
    },
}

struct Row {
    label: &'static str,
    kind: Kind,
    manifest: Value,
    via: Via,
    expect: Outcome,
}

fn rejected(label: &'static str, kind: Kind, spec: Value, contains: &'static str) -> Row {
    Row {
        label,
        kind,
        manifest: manifest(kind, label, spec),
        via: Via::Create,
        expect: Outcome::Rejected { contains },
    }
}

fn stalled(label: &'static str, kind: Kind, spec: Value, reason: &'static str) -> Row {
    Row {
        label,
        kind,
        manifest: manifest(kind, label, spec),
        via: Via::Create,
        expect: Outcome::Stalled { reason },
    }
}

fn manifest(kind: Kind, name: &str, spec: Value) -> Value {
    match kind {
        Kind::Checkpoint => checkpoint_manifest(name, spec),
        Kind::Clone => clone_manifest(name, spec),
        Kind::Store => json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseStore",
                              "metadata": {"name": format!("bad-input-{name}")}, "spec": spec}),
        Kind::Schedule => {
            json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpointSchedule",
                                 "metadata": {"name": name}, "spec": spec})
        }
        Kind::Copy => json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCopy",
                             "metadata": {"name": name}, "spec": spec}),
    }
}

/// The table. `store` is the test's own store (with the sample database at [`PARENT`] and a ready
/// checkpoint `nightly` of it); `namespace` is the test namespace.
fn table(store: &TestStore, namespace: &str) -> Vec<Row> {
    [
        clone_shape_rows(),
        clone_source_rows(store),
        clone_path_rows(store),
        clone_oversized_rows(),
        clone_key_range_rows(),
        clone_duration_rows(),
        checkpoint_shape_rows(store),
        checkpoint_path_rows(store),
        checkpoint_adopt_rows(store),
        checkpoint_lifetime_rows(store),
        other_namespace_rows(namespace),
        refused_store_rows(),
        database_store_shape_rows(),
        database_store_use_rows(namespace),
        stalled_rows(store),
        reference_rows(store, namespace),
        empty_decoded_range_rows(),
        schedule_rows(store),
        copy_rows(store, namespace),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `spec.database` (or `spec.source.database`): `path` on the test's store.
fn database(store: &TestStore, path: &str) -> Value {
    json!({"store": store.store_spec(), "path": path})
}

/// A clone spec of the checkpoint `nightly` into `target`.
fn of_nightly(target: &str) -> Value {
    json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": target}})
}

/// `spec` with the field at the JSON pointer `pointer` set to `value` (its parent must exist).
fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
    let (parent_pointer, key) = pointer.rsplit_once('/').unwrap();
    spec.pointer_mut(parent_pointer).unwrap()[key] = value;
    spec
}

/// A valid clone spec (of `nightly` into `clones/x`) with one field set to `value`.
fn clone_with(pointer: &str, value: Value) -> Value {
    with(of_nightly("clones/x"), pointer, value)
}

/// A valid checkpoint spec (of the parent database) with one field set to `value`.
fn checkpoint_with(store: &TestStore, pointer: &str, value: Value) -> Value {
    with(json!({"database": database(store, PARENT)}), pointer, value)
}

/// A clone spec of `nightly` restricted to the key range `[start, end)`.
fn key_range(start: &str, end: &str) -> Value {
    clone_with("/source/keyRange", json!({"start": start, "end": end}))
}

/// A 100 KiB path.
fn huge_path() -> String {
    "d/".repeat(50 * 1024) + "x"
}

/// A name far longer than any limit.
fn long_name() -> String {
    "n".repeat(10_000)
}

/// DatabaseClones of the wrong shape or with fields of the wrong type.
fn clone_shape_rows() -> Vec<Row> {
    vec![
        rejected("clone-no-spec", Cl, Value::Null, "spec: Required value"),
        rejected(
            "clone-spec-string",
            Cl,
            json!("clone it"),
            "spec: Invalid value: \"string\": spec in body must be of type object",
        ),
        rejected(
            "clone-no-source",
            Cl,
            json!({"target": {"path": "clones/x"}}),
            "spec.source: Required value",
        ),
        rejected(
            "clone-no-target",
            Cl,
            json!({"source": {"checkpointRef": {"name": "nightly"}}}),
            "spec.target: Required value",
        ),
        rejected(
            "clone-target-string",
            Cl,
            clone_with("/target", json!("clones/x")),
            "spec.target: Invalid value: \"string\": spec.target in body must be of type object",
        ),
        rejected(
            "clone-path-number",
            Cl,
            clone_with("/target/path", json!(42)),
            "spec.target.path in body must be of type string",
        ),
        rejected(
            "clone-ref-string",
            Cl,
            clone_with("/source/checkpointRef", json!("nightly")),
            "spec.source.checkpointRef in body must be of type object",
        ),
        rejected(
            "clone-ref-no-name",
            Cl,
            clone_with("/source/checkpointRef", json!({})),
            "spec.source.checkpointRef.name: Required value",
        ),
        rejected(
            "clone-ref-empty-name",
            Cl,
            clone_with("/source/checkpointRef/name", json!("")),
            "should be at least 1 chars long",
        ),
        rejected(
            "clone-verify-bool",
            Cl,
            clone_with("/verify", json!(true)),
            "spec.verify in body must be of type string",
        ),
        rejected(
            "clone-verify-unknown",
            Cl,
            clone_with("/verify", json!("Everything")),
            "Unsupported value: \"Everything\"",
        ),
        rejected(
            "clone-policy-unknown",
            Cl,
            clone_with("/expirationPolicy", json!("Archive")),
            "Unsupported value: \"Archive\"",
        ),
        rejected(
            "clone-deletion-null-type",
            Cl,
            clone_with("/deletionPolicy", json!(["Delete"])),
            "spec.deletionPolicy in body must be of type string",
        ),
    ]
}

/// DatabaseClones with no source or two, a store URL that is not one, or the source as the target.
fn clone_source_rows(store: &TestStore) -> Vec<Row> {
    vec![
        rejected(
            "clone-both-sources",
            Cl,
            clone_with("/source/database", database(store, PARENT)),
            "spec.source needs exactly one of checkpointRef, scheduleRef or database",
        ),
        rejected(
            "clone-neither-source",
            Cl,
            clone_with("/source", json!({})),
            "spec.source needs exactly one of checkpointRef, scheduleRef or database",
        ),
        rejected(
            "clone-only-key-range",
            Cl,
            clone_with("/source", json!({"keyRange": {"start": "a"}})),
            "spec.source needs exactly one of checkpointRef, scheduleRef or database",
        ),
        rejected(
            "clone-same-path",
            Cl,
            json!({"source": {"database": database(store, PARENT)}, "target": {"path": PARENT}}),
            "spec.target.path must differ from the source database path",
        ),
        rejected(
            "clone-bad-scheme",
            Cl,
            json!({"source": {"database": {"store": {"url": "ftp://host/x"}, "path": "p"}}, "target": {"path": "q"}}),
            "must be an object-store URL",
        ),
        rejected(
            "clone-empty-url",
            Cl,
            json!({"source": {"database": {"store": {"url": ""}, "path": "p"}}, "target": {"path": "q"}}),
            "should be at least 1 chars long",
        ),
        rejected(
            "clone-no-scheme",
            Cl,
            json!({"source": {"database": {"store": {"url": "/var/data"}, "path": "p"}}, "target": {"path": "q"}}),
            "must be an object-store URL",
        ),
    ]
}

/// DatabaseClones whose target or source path escapes, is absolute, empty or too long.
fn clone_path_rows(store: &TestStore) -> Vec<Row> {
    vec![
        rejected(
            "clone-dotdot",
            Cl,
            of_nightly(".."),
            "path must not contain '..' segments",
        ),
        rejected(
            "clone-dotdot-inner",
            Cl,
            of_nightly("clones/../prod/orders"),
            "path must not contain '..' segments",
        ),
        rejected(
            "clone-dotdot-tail",
            Cl,
            of_nightly("clones/.."),
            "path must not contain '..' segments",
        ),
        rejected(
            "clone-absolute",
            Cl,
            of_nightly("/clones/x"),
            "no leading '/'",
        ),
        rejected(
            "clone-empty-segment",
            Cl,
            of_nightly("clones//x"),
            "must not contain empty segments",
        ),
        rejected(
            "clone-trailing-slash",
            Cl,
            of_nightly("clones/x/"),
            "must not contain empty segments",
        ),
        rejected(
            "clone-empty-path",
            Cl,
            of_nightly(""),
            "path must not be empty",
        ),
        rejected(
            "clone-huge-path",
            Cl,
            of_nightly(&huge_path()),
            "Too long: may not be more than 1024 bytes",
        ),
        rejected(
            "clone-source-dotdot",
            Cl,
            json!({"source": {"database": database(store, "../prod/orders")}, "target": {"path": "clones/x"}}),
            "path must not contain '..' segments",
        ),
    ]
}

/// DatabaseClones with names and strings beyond their limits, up to a manifest bigger than the API
/// server takes in one request.
fn clone_oversized_rows() -> Vec<Row> {
    let mut huge_name = manifest(Cl, "x", of_nightly("clones/x"));
    huge_name["metadata"]["name"] = json!(long_name());
    vec![
        rejected(
            "clone-huge-ref-name",
            Cl,
            clone_with("/source/checkpointRef/name", json!(long_name())),
            "Too long: may not be more than 253 bytes",
        ),
        rejected(
            "clone-huge-key",
            Cl,
            key_range(&"k".repeat(100 * 1024), "z"),
            "Too long: may not be more than 4096 bytes",
        ),
        rejected(
            "clone-huge-url",
            Cl,
            json!({"source": {"database": {"store": {"url": format!("s3://{}", "b".repeat(100 * 1024))}, "path": "p"}}, "target": {"path": "q"}}),
            "Too long: may not be more than 2048 bytes",
        ),
        // A manifest bigger than the API server takes in one request.
        rejected(
            "clone-over-request-limit",
            Cl,
            key_range(&"k".repeat(4 << 20), "z"),
            "Request entity too large",
        ),
        Row {
            label: "clone-huge-metadata-name",
            kind: Cl,
            manifest: huge_name,
            via: Via::Create,
            expect: Outcome::Rejected {
                contains: "must be no more than 253 characters",
            },
        },
    ]
}

/// DatabaseClones with key ranges that are empty or inverted, or keys that are not valid `base64:`.
fn clone_key_range_rows() -> Vec<Row> {
    vec![
        rejected(
            "clone-range-inverted",
            Cl,
            key_range("m", "a"),
            "keyRange.start must sort before keyRange.end",
        ),
        rejected(
            "clone-range-empty",
            Cl,
            key_range("k", "k"),
            "keyRange.start must sort before keyRange.end",
        ),
        rejected(
            "clone-key-empty",
            Cl,
            key_range("", "z"),
            "should be at least 1 chars long",
        ),
        rejected(
            "clone-key-number",
            Cl,
            with(key_range("a", "z"), "/source/keyRange/end", json!(7)),
            "spec.source.keyRange.end in body must be of type string",
        ),
        rejected(
            "clone-base64-not-base64",
            Cl,
            key_range("base64:not base64!", "z"),
            "a key starting with 'base64:' must continue with standard padded base64",
        ),
        rejected(
            "clone-base64-unpadded",
            Cl,
            key_range("base64:AAE", "z"),
            "standard padded base64",
        ),
        rejected(
            "clone-base64-urlsafe",
            Cl,
            key_range("a", "base64:-_-_"),
            "standard padded base64",
        ),
        rejected(
            "clone-base64-empty-ish",
            Cl,
            key_range("base64:=", "z"),
            "standard padded base64",
        ),
        rejected(
            "clone-base64-non-ascii",
            Cl,
            key_range("base64:ÿÿÿÿ", "z"),
            "standard padded base64",
        ),
        // Invalid UTF-8 bytes in a `base64:` key bound (JSON cannot carry them; the API server replaces
        // them with U+FFFD, which is not base64).
        Row {
            label: "clone-base64-invalid-utf8",
            kind: Cl,
            manifest: manifest(Cl, "clone-base64-invalid-utf8", key_range("base64:@@", "z")),
            via: Via::RawBytes(vec![0xff, 0xfe, 0xc3, 0x28]),
            expect: Outcome::Rejected {
                contains: "standard padded base64",
            },
        },
    ]
}

/// DatabaseClones whose `expireAfter` is not a duration or out of range.
fn clone_duration_rows() -> Vec<Row> {
    vec![
        rejected(
            "clone-duration-words",
            Cl,
            clone_with("/expireAfter", json!("3 days")),
            "must be a duration such as 30m, 24h or 1h30m",
        ),
        rejected(
            "clone-duration-days",
            Cl,
            clone_with("/expireAfter", json!("3d")),
            "must be a duration such as 30m, 24h or 1h30m",
        ),
        rejected(
            "clone-duration-negative",
            Cl,
            clone_with("/expireAfter", json!("-1h")),
            "must be a duration such as 30m, 24h or 1h30m",
        ),
        rejected(
            "clone-duration-zero",
            Cl,
            clone_with("/expireAfter", json!("0s")),
            "between 1s and 87600h",
        ),
        rejected(
            "clone-duration-too-short",
            Cl,
            clone_with("/expireAfter", json!("999ms")),
            "between 1s and 87600h",
        ),
        rejected(
            "clone-duration-too-long",
            Cl,
            clone_with("/expireAfter", json!("87601h")),
            "between 1s and 87600h",
        ),
        rejected(
            "clone-duration-overflow",
            Cl,
            clone_with("/expireAfter", json!("9999999999999999999h")),
            "expireAfter",
        ),
        rejected(
            "clone-duration-number",
            Cl,
            clone_with("/expireAfter", json!(3600)),
            "spec.expireAfter in body must be of type string",
        ),
        rejected(
            "clone-duration-empty",
            Cl,
            clone_with("/expireAfter", json!("")),
            "must be a duration such as 30m, 24h or 1h30m",
        ),
    ]
}

/// DatabaseCheckpoints of the wrong shape, with fields of the wrong type or an invalid name.
fn checkpoint_shape_rows(store: &TestStore) -> Vec<Row> {
    let mut bad_name = manifest(Cp, "x", json!({"database": database(store, PARENT)}));
    bad_name["metadata"]["name"] = json!("Nightly_Backup");
    vec![
        rejected("cp-no-spec", Cp, Value::Null, "spec: Required value"),
        rejected(
            "cp-no-database",
            Cp,
            json!({"lifetime": "1h"}),
            "spec.database: Required value",
        ),
        rejected(
            "cp-database-string",
            Cp,
            json!({"database": "prod/orders"}),
            "spec.database in body must be of type object",
        ),
        rejected(
            "cp-no-path",
            Cp,
            json!({"database": {"store": store.store_spec()}}),
            "spec.database.path: Required value",
        ),
        rejected(
            "cp-no-store",
            Cp,
            json!({"database": {"path": PARENT}}),
            "spec.database.store: Required value",
        ),
        rejected(
            "cp-secret-empty-name",
            Cp,
            json!({"database": {"store": {"url": "s3://b", "secretRef": {"name": ""}}, "path": PARENT}}),
            "should be at least 1 chars long",
        ),
        rejected(
            "cp-bad-wal-url",
            Cp,
            json!({"database": {"store": {"url": "s3://b", "walUrl": "http://wal"}, "path": PARENT}}),
            "must be an object-store URL",
        ),
        rejected(
            "cp-url-number",
            Cp,
            json!({"database": {"store": {"url": 5}, "path": PARENT}}),
            "spec.database.store.url in body must be of type string",
        ),
        rejected(
            "cp-checksum-unknown",
            Cp,
            checkpoint_with(store, "/checksum", json!("Full")),
            "Unsupported value: \"Full\"",
        ),
        rejected(
            "cp-policy-unknown",
            Cp,
            checkpoint_with(store, "/deletionPolicy", json!("Keep")),
            "Unsupported value: \"Keep\"",
        ),
        rejected(
            "cp-mode-unknown",
            Cp,
            checkpoint_with(store, "/source", json!({"mode": "Copy"})),
            "Unsupported value: \"Copy\"",
        ),
        Row {
            label: "cp-invalid-metadata-name",
            kind: Cp,
            manifest: bad_name,
            via: Via::Create,
            expect: Outcome::Rejected {
                contains: "a lowercase RFC 1123 subdomain",
            },
        },
    ]
}

/// DatabaseCheckpoints whose database path escapes, is absolute or too long.
fn checkpoint_path_rows(store: &TestStore) -> Vec<Row> {
    vec![
        rejected(
            "cp-dotdot",
            Cp,
            json!({"database": database(store, "prod/../etc")}),
            "path must not contain '..' segments",
        ),
        rejected(
            "cp-absolute",
            Cp,
            json!({"database": database(store, "/etc/passwd")}),
            "no leading '/'",
        ),
        rejected(
            "cp-empty-segment",
            Cp,
            json!({"database": database(store, "prod//orders")}),
            "must not contain empty segments",
        ),
        rejected(
            "cp-huge-path",
            Cp,
            json!({"database": database(store, &huge_path())}),
            "Too long: may not be more than 1024 bytes",
        ),
    ]
}

/// DatabaseCheckpoints that adopt an application checkpoint inconsistently.
fn checkpoint_adopt_rows(store: &TestStore) -> Vec<Row> {
    vec![
        rejected(
            "cp-adopt-missing",
            Cp,
            checkpoint_with(store, "/source", json!({"mode": "Adopt"})),
            "source.adopt must be set when, and only when, source.mode is Adopt",
        ),
        rejected(
            "cp-adopt-with-create",
            Cp,
            checkpoint_with(
                store,
                "/source",
                json!({"mode": "Create", "adopt": {"name": "n"}}),
            ),
            "source.adopt must be set when, and only when, source.mode is Adopt",
        ),
        rejected(
            "cp-adopt-both",
            Cp,
            checkpoint_with(
                store,
                "/source",
                json!({"mode": "Adopt", "adopt": {"id": "0195d7a2-3c4f-7e21-9a0b-1c2d3e4f5a6b", "name": "n"}}),
            ),
            "source.adopt needs exactly one of id or name",
        ),
        rejected(
            "cp-adopt-neither",
            Cp,
            checkpoint_with(store, "/source", json!({"mode": "Adopt", "adopt": {}})),
            "source.adopt needs exactly one of id or name",
        ),
        rejected(
            "cp-adopt-bad-uuid",
            Cp,
            checkpoint_with(
                store,
                "/source",
                json!({"mode": "Adopt", "adopt": {"id": "not-a-uuid"}}),
            ),
            "source.adopt.id must be a UUID",
        ),
        rejected(
            "cp-adopt-huge-name",
            Cp,
            checkpoint_with(
                store,
                "/source",
                json!({"mode": "Adopt", "adopt": {"name": long_name()}}),
            ),
            "Too long: may not be more than 512 bytes",
        ),
    ]
}

/// DatabaseCheckpoints whose `lifetime` is not a duration or out of range.
fn checkpoint_lifetime_rows(store: &TestStore) -> Vec<Row> {
    vec![
        rejected(
            "cp-lifetime-years",
            Cp,
            checkpoint_with(store, "/lifetime", json!("1y")),
            "must be a duration such as 30m, 24h or 1h30m",
        ),
        rejected(
            "cp-lifetime-too-long",
            Cp,
            checkpoint_with(store, "/lifetime", json!("100000h")),
            "between 1s and 87600h",
        ),
        rejected(
            "cp-lifetime-fraction-short",
            Cp,
            checkpoint_with(store, "/lifetime", json!("0.5s")),
            "between 1s and 87600h",
        ),
        rejected(
            "cp-lifetime-object",
            Cp,
            checkpoint_with(store, "/lifetime", json!({"hours": 1})),
            "spec.lifetime in body must be of type string",
        ),
    ]
}

/// References to another namespace: the schema has no namespace field, so a strict apply refuses
/// them, and a lenient create prunes them and the reference stays in this namespace.
fn other_namespace_rows(namespace: &str) -> Vec<Row> {
    let elsewhere = clone_with(
        "/source/checkpointRef",
        json!({"name": "elsewhere", "namespace": "kube-system"}),
    );
    vec![
        Row {
            label: "clone-ref-namespace-strict",
            kind: Cl,
            manifest: manifest(Cl, "clone-ref-namespace-strict", elsewhere.clone()),
            via: Via::StrictCreate,
            expect: Outcome::Rejected {
                contains: "unknown field \"spec.source.checkpointRef.namespace\"",
            },
        },
        Row {
            label: "clone-ref-namespace-pruned",
            kind: Cl,
            manifest: manifest(Cl, "clone-ref-namespace-pruned", elsewhere),
            via: Via::Create,
            expect: Outcome::Reconciling {
                reason: "SourceNotFound",
                contains: format!("DatabaseCheckpoint {namespace}/elsewhere does not exist"),
            },
        },
        Row {
            label: "cp-secret-namespace-strict",
            kind: Cp,
            manifest: manifest(
                Cp,
                "cp-secret-namespace-strict",
                json!({"database": {"store": {"url": "s3://b", "secretRef": {"name": "s", "namespace": "kube-system"}}, "path": PARENT}}),
            ),
            via: Via::StrictCreate,
            expect: Outcome::Rejected {
                contains: "unknown field \"spec.database.store.secretRef.namespace\"",
            },
        },
    ]
}

/// Manifests the API server admits and the operator then stalls with a reason.
/// Secrets of inline stores the operator must refuse to open (created by [`run_table`]): explicit
/// keys, plus an option pointing the operator at its own identity. The addresses are loopback
/// ones that nothing listens on: the store is refused before any request, and no test may send
/// traffic off this machine (the link-local refusal is unit-tested in `store_policy.rs`).
const REFUSED_SECRETS: [(&str, &str, &str); 3] = [
    (
        "identity-option",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
    ),
    (
        "container-credentials",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "http://127.0.0.1:1/v2/credentials",
    ),
    (
        "metadata-endpoint",
        "AWS_METADATA_ENDPOINT",
        "http://127.0.0.1:1",
    ),
];

/// Inline stores the operator must not open, whatever is under them.
fn refused_store_rows() -> Vec<Row> {
    let s3 = |secret: Option<&str>| match secret {
        Some(name) => json!({"url": "s3://e2e-bucket/refused", "secretRef": {"name": name}}),
        None => json!({"url": "s3://e2e-bucket/refused"}),
    };
    vec![
        stalled(
            "store-inline-without-credentials",
            Cp,
            json!({"database": {"store": s3(None), "path": PARENT}}),
            "StoreNotAllowed",
        ),
        stalled(
            "store-web-identity-token-file",
            Cp,
            json!({"database": {"store": s3(Some("identity-option")), "path": PARENT}}),
            "StoreNotAllowed",
        ),
        stalled(
            "store-container-credentials",
            Cl,
            json!({"source": {"database": {"store": s3(Some("container-credentials")), "path": PARENT}},
                   "target": {"path": "clones/refused"}}),
            "StoreNotAllowed",
        ),
        stalled(
            "store-metadata-endpoint",
            Cl,
            json!({"source": {"database": {"store": s3(Some("metadata-endpoint")), "path": PARENT}},
                   "target": {"path": "clones/refused-2"}}),
            "StoreNotAllowed",
        ),
    ]
}

/// A valid DatabaseStore spec with `value` at `pointer`.
fn store_with(pointer: &str, value: Value) -> Value {
    let spec = json!({"url": "s3://bucket", "credentials": {"secretRef": {"name": "creds"}},
                      "namespaces": {"names": ["team-a"]}});
    with(spec, pointer, value)
}

/// DatabaseStores and store references the API server refuses.
fn database_store_shape_rows() -> Vec<Row> {
    let no_field = |spec: Value, field: &str| {
        let mut spec = spec;
        spec.as_object_mut().unwrap().remove(field);
        spec
    };
    vec![
        rejected(
            "store-ref-and-url",
            Cp,
            json!({"database": {"store": {"ref": "shared", "url": "s3://b"}, "path": PARENT}}),
            "store needs exactly one of ref (a DatabaseStore) or url",
        ),
        rejected(
            "store-neither-ref-nor-url",
            Cp,
            json!({"database": {"store": {}, "path": PARENT}}),
            "store needs exactly one of ref (a DatabaseStore) or url",
        ),
        rejected(
            "store-ref-with-secret",
            Cl,
            json!({"source": {"database": {"store": {"ref": "shared", "secretRef": {"name": "s"}}, "path": PARENT}},
                   "target": {"path": "clones/x"}}),
            "a store ref takes no secretRef or walUrl",
        ),
        rejected(
            "store-ref-empty",
            Cp,
            json!({"database": {"store": {"ref": ""}, "path": PARENT}}),
            "should be at least 1 chars long",
        ),
        rejected(
            "dbstore-both-credentials",
            St,
            store_with("/credentials/ambient", json!(true)),
            "credentials needs exactly one of secretRef or ambient: true",
        ),
        rejected(
            "dbstore-no-credentials",
            St,
            store_with("/credentials", json!({})),
            "credentials needs exactly one of secretRef or ambient: true",
        ),
        rejected(
            "dbstore-no-namespaces",
            St,
            store_with("/namespaces", json!({"names": []})),
            "namespaces needs names or a selector",
        ),
        rejected(
            "dbstore-bad-namespace-name",
            St,
            store_with("/namespaces/names", json!(["Team_A"])),
            "must be a namespace name",
        ),
        rejected(
            "dbstore-absolute-prefix",
            St,
            store_with("/readPrefixes", json!(["/{namespace}"])),
            "a prefix is relative",
        ),
        rejected(
            "dbstore-dotdot-prefix",
            St,
            store_with("/writePrefixes", json!(["{namespace}/../other"])),
            "a prefix must not contain '..' segments",
        ),
        rejected(
            "dbstore-unknown-placeholder",
            St,
            store_with("/writePrefixes", json!(["{tenant}"])),
            "the only placeholder a prefix may hold is {namespace}",
        ),
        rejected(
            "dbstore-bad-url",
            St,
            store_with("/url", json!("http://bucket")),
            "must be an object-store URL",
        ),
        rejected(
            "dbstore-no-url",
            St,
            no_field(store_with("/namespaces/names", json!(["a"])), "url"),
            "spec.url: Required value",
        ),
    ]
}

/// Names of the DatabaseStores [`run_table`] makes for the test in `namespace`.
fn test_store(namespace: &str, role: &str) -> String {
    format!("{namespace}-{role}")
}

/// Uses of DatabaseStores that do not allow them (stores made by [`run_table`]).
fn database_store_use_rows(namespace: &str) -> Vec<Row> {
    let on = |role: &str, path: &str| json!({"database": {"store": {"ref": test_store(namespace, role)}, "path": path}});
    let own_db = format!("{namespace}/db");
    vec![
        stalled(
            "store-other-namespaces",
            Cp,
            on("elsewhere", &own_db),
            "StoreNotAllowed",
        ),
        stalled(
            "store-read-outside-prefix",
            Cp,
            on("own", "other-team/db"),
            "StoreNotAllowed",
        ),
        stalled(
            "store-write-outside-prefix",
            Cl,
            json!({"source": on("own", &own_db), "target": {"path": "other-team/clone"}}),
            "StoreNotAllowed",
        ),
        stalled(
            "store-not-served",
            Cp,
            on("foreign", &own_db),
            "StoreNotAllowed",
        ),
        stalled(
            "store-secret-without-credentials",
            Cp,
            on("no-credentials", &own_db),
            "InvalidStore",
        ),
        stalled(
            "store-credential-in-spec-options",
            Cp,
            on("key-in-spec", &own_db),
            "InvalidStore",
        ),
        Row {
            label: "store-missing",
            kind: Cp,
            manifest: manifest(Cp, "store-missing", on("no-such-store", &own_db)),
            via: Via::Create,
            expect: Outcome::Reconciling {
                reason: "StoreNotFound",
                contains: format!(
                    "DatabaseStore {} does not exist",
                    test_store(namespace, "no-such-store")
                ),
            },
        },
    ]
}

/// Makes the DatabaseStores the rows of [`database_store_use_rows`] name.
async fn make_test_stores(env: &TestEnv, store: &TestStore) {
    let ns = &env.namespace;
    let file = |namespaces: Value| json!({"url": store.url, "credentials": {"ambient": true}, "namespaces": namespaces});
    env.create_store(
        &test_store(ns, "elsewhere"),
        file(json!({"names": ["somebody-else"]})),
        true,
    )
    .await;
    env.create_store(&test_store(ns, "own"), file(json!({"names": [ns]})), true)
        .await;
    env.create_store(
        &test_store(ns, "foreign"),
        file(json!({"names": [ns]})),
        false,
    )
    .await;
    let s3 = |secret: &str, options: Value| {
        json!({"url": "s3://e2e-bucket/refused", "credentials": {"secretRef": {"name": secret}},
               "options": options, "namespaces": {"names": [ns]}})
    };
    let no_keys: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "no-keys"}, "stringData": {"AWS_REGION": "us-east-1"}
    }))
    .unwrap();
    env.api::<k8s_openapi::api::core::v1::Secret>()
        .create(&Default::default(), &no_keys)
        .await
        .unwrap();
    env.create_store(
        &test_store(ns, "no-credentials"),
        s3("no-keys", json!({})),
        true,
    )
    .await;
    env.create_store(
        &test_store(ns, "key-in-spec"),
        s3(
            "no-keys",
            json!({"AWS_SECRET_ACCESS_KEY": "in-plain-sight"}),
        ),
        true,
    )
    .await;
}

fn stalled_rows(store: &TestStore) -> Vec<Row> {
    vec![
        stalled(
            "cp-not-a-database",
            Cp,
            json!({"database": database(store, "nothing/here")}),
            "NotADatabase",
        ),
        stalled(
            "cp-bad-bucket",
            Cp,
            json!({"database": {"store": {"url": "s3://bad bucket/x"}, "path": PARENT}}),
            "InvalidStoreUrl",
        ),
        stalled(
            "cp-dot-segment",
            Cp,
            json!({"database": database(store, "prod/./orders")}),
            "NotADatabase",
        ),
        stalled(
            "cp-adopt-unknown-id",
            Cp,
            checkpoint_with(
                store,
                "/source",
                json!({"mode": "Adopt", "adopt": {"id": "0195d7a2-3c4f-7e21-9a0b-1c2d3e4f5a6b"}}),
            ),
            "CheckpointMissing",
        ),
        stalled(
            "cp-adopt-unknown-name",
            Cp,
            checkpoint_with(
                store,
                "/source",
                json!({"mode": "Adopt", "adopt": {"name": "no-such-checkpoint"}}),
            ),
            "CheckpointMissing",
        ),
        stalled(
            "cp-of-a-clone-target-dir",
            Cp,
            json!({"database": database(store, "other")}),
            "NotADatabase",
        ),
        stalled(
            "clone-target-holds-db",
            Cl,
            of_nightly(OTHER_DB),
            "TargetNotEmpty",
        ),
        stalled(
            "clone-latest-target-holds-db",
            Cl,
            json!({"source": {"database": database(store, PARENT)}, "target": {"path": OTHER_DB}}),
            "TargetNotEmpty",
        ),
        stalled(
            "clone-target-is-parent-dir",
            Cl,
            of_nightly("prod"),
            "TargetNotEmpty",
        ),
        stalled(
            "clone-target-is-source",
            Cl,
            of_nightly(PARENT),
            "InvalidSpec",
        ),
        stalled(
            "clone-source-not-a-db",
            Cl,
            json!({"source": {"database": database(store, "nothing/here")}, "target": {"path": "clones/none"}}),
            "NotADatabase",
        ),
        stalled(
            "clone-source-bad-bucket",
            Cl,
            json!({"source": {"database": {"store": {"url": "s3://bad bucket/x"}, "path": PARENT}}, "target": {"path": "clones/bb"}}),
            "InvalidStoreUrl",
        ),
    ]
}

/// References to objects that do not exist (yet), transient by design so that applying a set of
/// manifests in any order converges, and a clone of a stalled checkpoint, which stalls too.
fn reference_rows(store: &TestStore, namespace: &str) -> Vec<Row> {
    vec![
        Row {
            label: "clone-missing-checkpoint",
            kind: Cl,
            manifest: manifest(
                Cl,
                "clone-missing-checkpoint",
                clone_with("/source/checkpointRef/name", json!("no-such-checkpoint")),
            ),
            via: Via::Create,
            expect: Outcome::Reconciling {
                reason: "SourceNotFound",
                contains: format!(
                    "DatabaseCheckpoint {namespace}/no-such-checkpoint does not exist"
                ),
            },
        },
        Row {
            label: "clone-missing-secret",
            kind: Cl,
            manifest: manifest(
                Cl,
                "clone-missing-secret",
                json!({"source": {"database": {"store": {"url": store.url, "secretRef": {"name": "no-such-secret"}}, "path": PARENT}},
                       "target": {"path": "clones/ms"}}),
            ),
            via: Via::Create,
            expect: Outcome::Reconciling {
                reason: "SecretNotFound",
                contains: "no-such-secret".into(),
            },
        },
        Row {
            label: "cp-missing-secret",
            kind: Cp,
            manifest: manifest(
                Cp,
                "cp-missing-secret",
                json!({"database": {"store": {"url": store.url, "secretRef": {"name": "no-such-secret"}}, "path": PARENT}}),
            ),
            via: Via::Create,
            expect: Outcome::Reconciling {
                reason: "SecretNotFound",
                contains: "no-such-secret".into(),
            },
        },
        Row {
            label: "clone-of-stalled-checkpoint",
            kind: Cl,
            manifest: manifest(
                Cl,
                "clone-of-stalled-checkpoint",
                clone_with("/source/checkpointRef/name", json!("cp-not-a-database")),
            ),
            via: Via::Create,
            expect: Outcome::Stalled {
                reason: "SourceStalled",
            },
        },
    ]
}

/// Key ranges that only the decoded bytes show to be empty: the CRD's rule compares text bounds
/// only, so the operator checks the decoded range (SlateDB would panic on an empty one).
fn empty_decoded_range_rows() -> Vec<Row> {
    let ranged_of_nightly = |target: &str, start: &str, end: &str| {
        json!({"source": {"checkpointRef": {"name": "nightly"}, "keyRange": {"start": start, "end": end}},
               "target": {"path": target}})
    };
    vec![
        stalled(
            "clone-base64-inverted",
            Cl,
            ranged_of_nightly("clones/inverted", "base64:eg==", "base64:YQ=="),
            "InvalidKeyRange",
        ),
        stalled(
            "clone-base64-empty-range",
            Cl,
            ranged_of_nightly("clones/empty-range", "base64:YQ==", "a"),
            "InvalidKeyRange",
        ),
    ]
}

/// Schedules with bad expressions, zones, retention or templates, and a clone of a schedule that
/// does not exist.
fn schedule_rows(store: &TestStore) -> Vec<Row> {
    let valid = |schedule: &str| {
        json!({"schedule": schedule,
               "checkpointTemplate": {"spec": {"database": database(store, PARENT)}}})
    };
    let with_retention = |retention: Value| with(valid("@every 1h"), "/retention", retention);
    vec![
        rejected(
            "sched-words",
            Sc,
            valid("every day"),
            "schedule must be 5 cron fields",
        ),
        rejected(
            "sched-six-fields",
            Sc,
            valid("0 0 2 * * *"),
            "schedule must be 5 cron fields",
        ),
        rejected(
            "sched-every-5s",
            Sc,
            valid("@every 5s"),
            "'@every <duration>' of at least 10s",
        ),
        rejected(
            "sched-every-junk",
            Sc,
            valid("@every soon"),
            "'@every <duration>' of at least 10s",
        ),
        rejected(
            "sched-keep-zero",
            Sc,
            with_retention(json!({"keepLast": 0})),
            "between 1 and 10000",
        ),
        rejected(
            "sched-keep-empty",
            Sc,
            with_retention(json!({})),
            "retention needs keepLast",
        ),
        rejected(
            "sched-keep-within",
            Sc,
            with_retention(json!({"keepWithin": "a week"})),
            "must be a duration",
        ),
        rejected(
            "sched-adopt",
            Sc,
            with(
                valid("@daily"),
                "/checkpointTemplate/spec/source",
                json!({"mode": "Adopt", "adopt": {"name": "x"}}),
            ),
            "a scheduled checkpoint is created, not adopted",
        ),
        stalled(
            "sched-minute-61",
            Sc,
            valid("61 * * * *"),
            "InvalidSchedule",
        ),
        stalled(
            "sched-zone",
            Sc,
            with(valid("0 2 * * *"), "/timeZone", json!("Mars/Olympus")),
            "InvalidTimeZone",
        ),
        stalled(
            "sched-every-zone",
            Sc,
            with(valid("@every 1h"), "/timeZone", json!("UTC")),
            "InvalidTimeZone",
        ),
        stalled(
            "sched-not-a-database",
            Sc,
            json!({"schedule": "@every 10s",
                   "checkpointTemplate": {"spec": {"database": database(store, "nothing/here")}}}),
            "CheckpointStalled",
        ),
        stalled(
            "clone-missing-schedule",
            Cl,
            json!({"source": {"scheduleRef": {"name": "no-such-schedule"}}, "target": {"path": "clones/sched"}}),
            "ScheduleNotFound",
        ),
    ]
}

/// DatabaseCopy: the shapes admission refuses, and a checkpoint that may still appear.
fn copy_rows(store: &TestStore, namespace: &str) -> Vec<Row> {
    let valid = || {
        json!({"source": {"checkpointRef": {"name": "nightly"}},
               "target": {"store": store.store_spec(), "path": "copies/bad"}})
    };
    vec![
        rejected(
            "copy-two-sources",
            Co,
            with(valid(), "/source/database", database(store, PARENT)),
            "spec.source needs exactly one of checkpointRef, scheduleRef or database",
        ),
        rejected(
            "copy-parallelism-0",
            Co,
            with(valid(), "/parallelism", json!(0)),
            "spec.parallelism must be 1 to 256",
        ),
        rejected(
            "copy-shares-100",
            Co,
            with(valid(), "/job", json!({"shares": 100})),
            "spec.job.shares must be 1 to 64",
        ),
        rejected(
            "copy-negative-threshold",
            Co,
            with(valid(), "/job", json!({"thresholdBytes": -1})),
            "spec.job.thresholdBytes cannot be negative",
        ),
        rejected(
            "copy-reencode-block-1000",
            Co,
            with(
                valid(),
                "/reencode",
                json!({"compression": "Zstd", "blockSize": 1000}),
            ),
            "spec.reencode.blockSize must be a power of two from 1024 to 65536",
        ),
        rejected(
            "copy-reencode-promote",
            Co,
            with(
                with(valid(), "/reencode", json!({"compression": "Lz4"})),
                "/promote",
                json!(true),
            ),
            "spec.promote does not apply",
        ),
        rejected(
            "copy-no-target-store",
            Co,
            with(valid(), "/target", json!({"path": "copies/bad"})),
            "spec.target.store",
        ),
        Row {
            label: "copy-missing-checkpoint",
            kind: Co,
            manifest: manifest(
                Co,
                "copy-missing-checkpoint",
                with(valid(), "/source/checkpointRef/name", json!("not-yet")),
            ),
            via: Via::Create,
            expect: Outcome::Reconciling {
                reason: "SourceNotFound",
                contains: format!("DatabaseCheckpoint {namespace}/not-yet does not exist"),
            },
        },
    ]
}

fn api_for(env: &TestEnv, kind: Kind) -> Api<DynamicObject> {
    match kind {
        Kind::Copy => dynamic_api::<DatabaseCopy>(env),
        Kind::Schedule => dynamic_api::<DatabaseCheckpointSchedule>(env),
        Kind::Checkpoint => dynamic_api::<DatabaseCheckpoint>(env),
        Kind::Clone => dynamic_api::<DatabaseClone>(env),
        Kind::Store => Api::all_with(
            env.client.clone(),
            &ApiResource::erase::<DatabaseStore>(&()),
        ),
    }
}

/// Sends one row to the API server; `Err` carries the API server's message on a refusal.
async fn submit(env: &TestEnv, row: &Row) -> Result<(), (u16, String)> {
    let api = api_for(env, row.kind);
    let refused = |e: kube::Error| match e {
        kube::Error::Api(status) => (status.code, status.message),
        other => (0, format!("not an API refusal: {other}")),
    };
    match &row.via {
        Via::Create => create_raw(&api, row.manifest.clone())
            .await
            .map(|_| ())
            .map_err(refused),
        Via::StrictCreate | Via::RawBytes(_) => {
            let mut body = serde_json::to_vec(&row.manifest).unwrap();
            if let Via::RawBytes(bytes) = &row.via {
                let at = body
                    .windows(2)
                    .position(|w| w == b"@@")
                    .expect("a raw-bytes row has a @@ placeholder");
                body = [&body[..at], &bytes[..], &body[at + 2..]].concat();
            }
            let (resource, namespace) = match row.kind {
                Kind::Checkpoint => (
                    ApiResource::erase::<DatabaseCheckpoint>(&()),
                    Some(env.namespace.as_str()),
                ),
                Kind::Clone => (
                    ApiResource::erase::<DatabaseClone>(&()),
                    Some(env.namespace.as_str()),
                ),
                Kind::Store => (ApiResource::erase::<DatabaseStore>(&()), None),
                Kind::Schedule => (
                    ApiResource::erase::<DatabaseCheckpointSchedule>(&()),
                    Some(env.namespace.as_str()),
                ),
                Kind::Copy => (
                    ApiResource::erase::<DatabaseCopy>(&()),
                    Some(env.namespace.as_str()),
                ),
            };
            let url = DynamicObject::url_path(&resource, namespace);
            let mut request = kube::core::Request::new(url)
                .create(&PostParams::default(), body)
                .unwrap();
            if matches!(row.via, Via::StrictCreate) {
                let uri = format!("{}&fieldValidation=Strict", request.uri());
                *request.uri_mut() = uri.parse().unwrap();
            }
            env.client
                .request::<Value>(request)
                .await
                .map(|_| ())
                .map_err(refused)
        }
    }
}

/// `(status, reason, message)` of condition `type_` of the object, if it has one.
fn condition(object: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    let conditions = object.data["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((field("status"), field("reason"), field("message")))
}

/// Waits until the row's object reaches its expected condition, or says what it reached instead.
async fn settle(env: &TestEnv, row: &Row, deadline: Instant) -> Result<(), String> {
    let api = api_for(env, row.kind);
    let name = row.manifest["metadata"]["name"].as_str().unwrap();
    let (wanted_type, wanted_reason) = match &row.expect {
        Outcome::Stalled { reason } => ("Stalled", *reason),
        Outcome::Reconciling { reason, .. } => ("Reconciling", *reason),
        Outcome::Rejected { .. } => unreachable!(),
    };
    loop {
        let object = api.get(name).await.map_err(|e| format!("get: {e}"))?;
        let reached = condition(&object, wanted_type).filter(|c| c.0 == "True");
        if let Some((_, reason, message)) = &reached {
            if reason != wanted_reason {
                return Err(format!(
                    "{wanted_type} with reason {reason:?} ({message}), expected {wanted_reason:?}"
                ));
            }
            if message.is_empty() {
                return Err(format!("{wanted_type}={reason} with an empty message"));
            }
            let ready = condition(&object, "Ready").map(|c| c.0);
            if ready.as_deref() != Some("False") {
                return Err(format!("{wanted_type}={reason} but Ready is {ready:?}"));
            }
            match &row.expect {
                Outcome::Reconciling { contains, .. } => {
                    if !message.contains(contains.as_str()) {
                        return Err(format!("message {message:?} lacks {contains:?}"));
                    }
                    // Transient: the operator must not call it Stalled, on this or a later look.
                    if let Some(stalled) = condition(&object, "Stalled") {
                        return Err(format!("Reconciling and also Stalled: {stalled:?}"));
                    }
                }
                _ => {
                    if condition(&object, "Reconciling").is_some_and(|c| c.0 == "True") {
                        return Err("Stalled and still Reconciling".into());
                    }
                }
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {wanted_type}=True in time; conditions: {}",
                object.data["status"]["conditions"]
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The operator processes started for `namespace` (by their command line), with their state.
fn operator_processes(namespace: &str) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"--namespaces" && w[1] == namespace.as_bytes())
            && args
                .first()
                .is_some_and(|a| a.ends_with(b"slatedb-operator"));
        if !ours {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ...: the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .unwrap_or('?');
        found.push((pid, state));
    }
    found
}

#[tokio::test]
async fn malformed_manifests_are_rejected_or_stall_and_the_operator_survives() {
    assert!(table(&TestStore::new(StoreKind::File, "x"), "x").len() >= 30);
    run_table("bad-input", table).await;
}

/// Starts an operator, a parent database with a Ready checkpoint `nightly` and a second database,
/// submits every row of `make_table`, waits for all admitted rows at once and checks the outcome
/// of each, that no database was written over, and that the operator survived.
async fn run_table(prefix: &str, make_table: fn(&TestStore, &str) -> Vec<Row>) {
    let started = Instant::now();
    let env = TestEnv::new(prefix).await;
    let store = TestStore::new(StoreKind::File, &env.namespace);
    let _operator = Operator::start(&env.namespace, &[]);
    let operator = eventually(Duration::from_secs(10), "the operator process", || async {
        match operator_processes(&env.namespace).as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    })
    .await;
    parent_and_checkpoint(&env, &store, 200, 1).await;
    write_sample_db(&store, OTHER_DB, 50, 1).await;
    for (name, key, value) in REFUSED_SECRETS {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", key: value}
        }))
        .unwrap();
        env.api::<k8s_openapi::api::core::v1::Secret>()
            .create(&Default::default(), &secret)
            .await
            .unwrap();
    }
    make_test_stores(&env, &store).await;
    let other_before = objects_under(&store, OTHER_DB).await;
    let parent_before = objects_under(&store, PARENT).await;

    let rows = make_table(&store, &env.namespace);
    let mut failures = Vec::new();
    let mut admitted = Vec::new();
    let (mut n_rejected, mut n_stalled, mut n_reconciling) = (0, 0, 0);
    for row in &rows {
        let result = submit(&env, row).await;
        match (&row.expect, result) {
            (Outcome::Rejected { contains }, Err((code, message))) => {
                n_rejected += 1;
                if !(400..500).contains(&code) || !message.contains(contains) {
                    failures.push(format!(
                        "{}: refused with {code} {message:?}, expected a 4xx containing {contains:?}",
                        row.label
                    ));
                }
            }
            (Outcome::Rejected { .. }, Ok(())) => {
                n_rejected += 1;
                failures.push(format!("{}: admitted, expected a refusal", row.label));
            }
            (_, Err((code, message))) => failures.push(format!(
                "{}: refused with {code} {message:?}, expected admission",
                row.label
            )),
            (expect, Ok(())) => {
                match expect {
                    Outcome::Stalled { .. } => n_stalled += 1,
                    _ => n_reconciling += 1,
                }
                admitted.push(row);
            }
        }
    }
    // Everything admitted settles concurrently, within one deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled =
        futures::future::join_all(admitted.iter().map(|row| settle(&env, row, deadline))).await;
    for (row, result) in admitted.iter().zip(settled) {
        if let Err(problem) = result {
            failures.push(format!("{}: {problem}", row.label));
        }
    }
    // The refused inline stores were never used: nothing of theirs exists on the S3 server.
    if let Ok(root) = std::env::var("E2E_S3_ROOT") {
        let refused = std::path::Path::new(&root)
            .join("e2e-bucket")
            .join("refused");
        if refused.exists() {
            failures.push(format!(
                "a refused store was written to: {}",
                refused.display()
            ));
        }
    }
    // A look later still finds each Stalled row Stalled with the same reason (no flapping).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for row in &admitted {
        if let Outcome::Stalled { reason } = row.expect {
            let name = row.manifest["metadata"]["name"].as_str().unwrap();
            let object = api_for(&env, row.kind).get(name).await.unwrap();
            let now = condition(&object, "Stalled");
            if now.as_ref().map(|c| (c.0.as_str(), c.1.as_str())) != Some(("True", reason)) {
                failures.push(format!("{}: later Stalled is {now:?}", row.label));
            }
        }
    }

    // Nothing was written over the other database or the parent, and no clone target holds data.
    assert_eq!(
        objects_under(&store, OTHER_DB).await,
        other_before,
        "other/db changed"
    );
    let parent_after = objects_under(&store, PARENT).await;
    for (object, digest) in &parent_before {
        assert_eq!(parent_after.get(object), Some(digest), "{object} changed");
    }
    for target in [
        "clones/inverted",
        "clones/empty-range",
        "clones/none",
        "clones/bb",
    ] {
        let left = objects_under(&store, target).await;
        if !left.is_empty() {
            failures.push(format!(
                "{target} holds {} objects after a stall",
                left.len()
            ));
        }
    }

    // The operator is the same process, still running, and never panicked.
    let now = operator_processes(&env.namespace);
    if now.len() != 1 || now[0].0 != operator.0 || matches!(now[0].1, 'Z' | 'X') {
        failures.push(format!(
            "the operator was restarted or exited: {operator:?} then {now:?}"
        ));
    }
    let log_path = std::env::temp_dir().join(format!("operator-{}.log", env.namespace));
    let log = std::fs::read_to_string(&log_path).unwrap();
    for panic in log.lines().filter(|l| l.contains("panicked")) {
        failures.push(format!("the operator {panic} ({})", log_path.display()));
    }

    eprintln!(
        "{prefix}: {} rows ({n_rejected} rejected, {n_stalled} stalled, {n_reconciling} reconciling) in {:?}",
        rows.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows did not behave as expected:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    env.cleanup().await;
}
