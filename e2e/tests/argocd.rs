//! The Argo CD health checks the chart ships (`argocd/slatedb.io/<Kind>/health.lua`): each run the way
//! Argo CD runs it over every file of its testdata, covering every status, with one check per kind in
//! `crds/`.

use crate::chart::CHART;
use crate::support::{describe, documents, repo_path, run_tool, yaml_files};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A Lua literal for a JSON value: objects become tables keyed by string, arrays sequences.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => format!("{f:?}"),
            _ => unreachable!(),
        },
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A double-quoted Lua string; quotes, backslashes and control bytes as three-digit decimal escapes.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' || (c as u32) < 0x20 || c == '\u{7f}' {
            out.push_str(&format!("\\{:03}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// Runs `health.lua` the way Argo CD does (the object in the global `obj`, the script returns a table)
/// and returns (status, message).
pub(crate) fn run_health_check(script: &Path, object: &Value) -> (String, String) {
    let harness = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_literal(object),
        lua_string(&script.display().to_string())
    );
    let output = run_tool("E2E_LUA", &["-"], Some(harness.as_bytes()));
    assert!(
        output.status.success(),
        "{}\n--- harness\n{harness}",
        describe(&format!("lua {}", script.display()), &output)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (status, message) = stdout.split_once('\n').expect("status and message");
    (status.to_string(), message.to_string())
}

#[test]
fn lua_literals_round_trip_awkward_strings() {
    let value = json!({"s": "quote \" backslash \\ newline \n tab \t 9 after escape \u{1}1", "n": [1, -2, 2.5], "b": true, "z": null});
    let harness = format!(
        "local v = {}\nio.write(v.s, '|', v.n[1] + v.n[2], '|', v.n[3], '|', tostring(v.b), '|', tostring(v.z))",
        lua_literal(&value)
    );
    let output = run_tool("E2E_LUA", &["-"], Some(harness.as_bytes()));
    assert!(output.status.success(), "{}", describe("lua", &output));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "quote \" backslash \\ newline \n tab \t 9 after escape \u{1}1|-1|2.5|true|nil"
    );
}

#[test]
fn argo_cd_health_checks_produce_the_expected_status_for_every_testdata_file() {
    let root = repo_path(&format!("{CHART}/argocd/slatedb.io"));
    let mut kinds_checked = BTreeSet::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let kind = dir.file_name().unwrap().to_string_lossy().into_owned();
        let script = dir.join("health.lua");
        let tests: Value = serde_json::to_value(
            serde_yaml::from_str::<serde_yaml::Value>(
                &std::fs::read_to_string(dir.join("health_test.yaml")).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut referenced = BTreeSet::new();
        let mut statuses = BTreeSet::new();
        for case in tests["tests"]
            .as_array()
            .expect("health_test.yaml has tests")
        {
            let input = case["inputPath"].as_str().unwrap();
            let object: Value = serde_json::to_value(
                serde_yaml::from_str::<serde_yaml::Value>(
                    &std::fs::read_to_string(dir.join(input))
                        .unwrap_or_else(|e| panic!("{kind}/{input}: {e}")),
                )
                .unwrap(),
            )
            .unwrap();
            assert_eq!(object["kind"], kind.as_str(), "{kind}/{input} is a {kind}");
            let expected = (
                case["healthStatus"]["status"].as_str().unwrap().to_string(),
                case["healthStatus"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
            assert_eq!(
                run_health_check(&script, &object),
                expected,
                "{kind}/{input}"
            );
            statuses.insert(expected.0);
            referenced.insert(PathBuf::from(input).file_name().unwrap().to_owned());
        }
        // Every testdata file is a test case, and every outcome the check can give is covered.
        for file in std::fs::read_dir(dir.join("testdata")).unwrap() {
            let name = file.unwrap().file_name();
            assert!(
                referenced.contains(&name),
                "{kind}/testdata/{name:?} is in no test"
            );
        }
        // A store is answering or not, a copy never expires; only checkpoints and clones do
        // (Suspended).
        let outcomes: &[&str] = match kind.as_str() {
            "DatabaseStore" | "DatabaseCopy" => &["Healthy", "Progressing", "Degraded"],
            _ => &["Healthy", "Progressing", "Degraded", "Suspended"],
        };
        for status in outcomes {
            assert!(
                statuses.contains(*status),
                "{kind} has no test expecting {status}"
            );
        }
        kinds_checked.insert(kind);
    }

    // A health check for every kind in crds/.
    let crd_kinds: BTreeSet<String> = yaml_files(&repo_path("crds"))
        .values()
        .flat_map(|bytes| documents(std::str::from_utf8(bytes).unwrap()))
        .map(|crd| {
            assert_eq!(crd["spec"]["group"], "slatedb.io");
            crd["spec"]["names"]["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(kinds_checked, crd_kinds);
}
