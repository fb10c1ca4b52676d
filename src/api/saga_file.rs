//! Saga files for `sagalog submit`: JSON or TOML, read into a [`SagaDefinition`].
//!
//! Both formats are first read into one small tree ([`Node`]) and then checked by a single
//! walker, so they accept exactly the same sagas and report problems the same way: the file's
//! name, the path inside it (`steps[1].params.rows`) and what is wrong. The walker checks only
//! the shape; whether an action exists and its parameters have the declared types is the
//! server's catalog's business (it answers INVALID_ARGUMENT naming step and parameter).
//!
//! Values: integers are `int`, other numbers `float`, strings `text`, booleans `bool`, JSON
//! `null` is `null`. Three one-key tables stand for what the formats cannot say directly:
//! `{"bytes_hex": "00ff"}` for bytes, `{"null": true}` for a null (TOML has no null), and
//! `{"from": "steps.N.name"}` for an earlier step's output.

use crate::engine::{StepCall, Value};
use std::collections::BTreeMap;

/// The largest saga file read (the server's default request limit is 4 MiB).
pub const SAGA_FILE_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// A saga as a file describes it: the id is optional (`--id` or a generated one fills it in).
#[derive(Debug, Clone, PartialEq)]
pub struct SagaFile {
    pub id: Option<String>,
    pub steps: Vec<StepCall>,
}

/// What is wrong with a saga file, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {problem}")]
pub struct SagaFileError {
    /// The file's path as given, or `<stdin>`.
    pub source_name: String,
    pub problem: String,
}

/// A document in either format, reduced to what a saga can contain.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer outside `i64`, kept as text for the error message.
    BigInt(String),
    Float(f64),
    Text(String),
    Datetime(String),
    Array(Vec<Node>),
    Table(BTreeMap<String, Node>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::BigInt(_) => "an integer",
            Node::Float(_) => "a number",
            Node::Text(_) => "a string",
            Node::Datetime(_) => "a date/time",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table/object",
        }
    }
}

/// Parses a saga file: JSON when its name ends in `.json`, TOML when it ends in `.toml`, and
/// otherwise (standard input, other names) JSON if its first non-blank character is `{`, TOML
/// if not.
pub fn parse(text: &str, source_name: &str) -> Result<SagaFile, SagaFileError> {
    let fail = |problem: String| SagaFileError { source_name: source_name.to_owned(), problem };
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.is_empty() {
        return Err(fail("the file is empty (expected a saga in JSON or TOML)".into()));
    }
    let lower = source_name.to_ascii_lowercase();
    let json = if lower.ends_with(".json") {
        true
    } else if lower.ends_with(".toml") {
        false
    } else {
        trimmed.starts_with('{')
    };
    let root = if json { json_tree(trimmed) } else { toml_tree(trimmed) }.map_err(fail)?;
    saga(&root).map_err(|problem| located(source_name, problem))
}

/// A shape problem of the walker as an error naming the source and the path.
fn located(source_name: &str, (path, problem): Problem) -> SagaFileError {
    let problem = if path.is_empty() { problem } else { format!("{path}: {problem}") };
    SagaFileError { source_name: source_name.to_owned(), problem }
}

/// Parses a saga in JSON whatever it looks like (the body of `POST /v1/sagas`).
pub fn parse_json(text: &str, source_name: &str) -> Result<SagaFile, SagaFileError> {
    let fail = |problem: String| SagaFileError { source_name: source_name.to_owned(), problem };
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.is_empty() {
        return Err(fail(
            "empty (expected a saga in JSON: {\"saga_id\": …, \"steps\": [{\"action\": …, \"params\": {…}}]})".into(),
        ));
    }
    let root = json_tree(trimmed).map_err(fail)?;
    saga(&root).map_err(|problem| located(source_name, problem))
}

/// A fresh saga id: a prefix, the UTC time to the second, and 32 random bits
/// (`demo-20261124T032204-9f3a1c07`).
pub fn generated_id(prefix: &str) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect();
    format!("{prefix}-{stamp}-{:08x}", rand::random::<u32>())
}

fn json_tree(text: &str) -> Result<Node, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("invalid JSON at line {}, column {}: {}", e.line(), e.column(), json_message(&e)))?;
    Ok(from_json(value))
}

/// serde_json appends " at line L column C" to its messages; the position is said already.
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn from_json(value: serde_json::Value) -> Node {
    use serde_json::Value as J;
    match value {
        J::Null => Node::Null,
        J::Bool(b) => Node::Bool(b),
        J::Number(n) => match (n.as_i64(), n.is_u64()) {
            (Some(i), _) => Node::Int(i),
            (None, true) => Node::BigInt(n.to_string()),
            (None, false) => Node::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Node::Text(s),
        J::Array(items) => Node::Array(items.into_iter().map(from_json).collect()),
        J::Object(map) => Node::Table(map.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
    }
}

fn toml_tree(text: &str) -> Result<Node, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("invalid TOML: {}", e.to_string().trim_end()))?;
    Ok(from_toml(toml::Value::Table(table)))
}

fn from_toml(value: toml::Value) -> Node {
    use toml::Value as T;
    match value {
        T::Boolean(b) => Node::Bool(b),
        T::Integer(i) => Node::Int(i),
        T::Float(f) => Node::Float(f),
        T::String(s) => Node::Text(s),
        T::Datetime(d) => Node::Datetime(d.to_string()),
        T::Array(items) => Node::Array(items.into_iter().map(from_toml).collect()),
        T::Table(map) => Node::Table(map.into_iter().map(|(k, v)| (k, from_toml(v))).collect()),
    }
}

/// A problem at a path inside the document.
type Problem = (String, String);

fn saga(root: &Node) -> Result<SagaFile, Problem> {
    let Node::Table(fields) = root else {
        return Err((String::new(), format!("expected a table/object with `steps`, found {}", root.kind())));
    };
    only_keys(fields, "", &["id", "saga_id", "steps"])?;
    // `saga_id` is the proto's name for the id (the HTTP API's JSON); `id` the original one.
    let text = |key: &str| match fields.get(key) {
        None => Ok(None),
        Some(Node::Text(id)) => Ok(Some(id.clone())),
        Some(other) => Err((key.to_owned(), format!("expected a string, found {}", other.kind()))),
    };
    let id = match (text("id")?, text("saga_id")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(("saga_id".into(), format!("{b:?} differs from id {a:?}: give one of them")));
        }
        (a, b) => a.or(b),
    };
    let steps = match fields.get("steps") {
        None => return Err((String::new(), "missing field `steps` (a list of {action, params})".into())),
        Some(Node::Array(steps)) => steps,
        Some(other) => return Err(("steps".into(), format!("expected an array of steps, found {}", other.kind()))),
    };
    if steps.is_empty() {
        return Err(("steps".into(), "a saga needs at least one step".into()));
    }
    let steps = steps.iter().enumerate().map(|(i, s)| step(s, &format!("steps[{i}]"))).collect::<Result<_, _>>()?;
    Ok(SagaFile { id, steps })
}

fn step(node: &Node, path: &str) -> Result<StepCall, Problem> {
    let Node::Table(fields) = node else {
        return Err((
            path.into(),
            format!("expected a table/object with `action` and `params`, found {}", node.kind()),
        ));
    };
    only_keys(fields, path, &["action", "params"])?;
    let action = match fields.get("action") {
        Some(Node::Text(action)) if !action.is_empty() => action.clone(),
        Some(Node::Text(_)) => return Err((format!("{path}.action"), "the action name is empty".into())),
        Some(other) => return Err((format!("{path}.action"), format!("expected a string, found {}", other.kind()))),
        None => return Err((path.into(), "missing field `action`".into())),
    };
    let (mut params, mut from) = (BTreeMap::new(), BTreeMap::new());
    match fields.get("params") {
        None => {}
        Some(Node::Table(values)) => {
            for (name, value) in values {
                let value_path = format!("{path}.params{}", key_path(name));
                // `{"from": "steps.N.name"}`: an earlier step's output, resolved when it runs.
                if let Node::Table(inner) = value
                    && inner.len() == 1
                    && let Some(reference) = inner.get("from")
                {
                    let Node::Text(reference) = reference else {
                        return Err((
                            format!("{value_path}.from"),
                            format!("expected \"steps.N.name\", found {}", reference.kind()),
                        ));
                    };
                    from.insert(name.clone(), reference.clone());
                    continue;
                }
                params.insert(name.clone(), param(value, &value_path)?);
            }
        }
        Some(other) => {
            return Err((
                format!("{path}.params"),
                format!("expected a table/object of parameters, found {}", other.kind()),
            ));
        }
    }
    Ok(StepCall { action, params, from })
}

fn param(node: &Node, path: &str) -> Result<Value, Problem> {
    let problem = |text: String| Err((path.to_owned(), text));
    match node {
        Node::Null => Ok(Value::Null),
        Node::Bool(b) => Ok(Value::Bool(*b)),
        Node::Int(i) => Ok(Value::Int(*i)),
        Node::BigInt(text) => problem(format!("integer {text} is out of range for int (64-bit signed)")),
        Node::Float(f) => Ok(Value::Float(*f)),
        Node::Text(s) => Ok(Value::Text(s.clone())),
        Node::Datetime(d) => problem(format!("date/time {d} is not a parameter type; write it as a string")),
        Node::Array(_) => problem("an array is not a parameter type (int, float, text, bool, bytes or null)".into()),
        Node::Table(fields) => tagged(fields, path),
    }
}

/// `{"bytes_hex": "..."}` or `{"null": true}`.
fn tagged(fields: &BTreeMap<String, Node>, path: &str) -> Result<Value, Problem> {
    let expected = "a table/object as a value must be {\"bytes_hex\": \"<hex>\"}, {\"null\": true} or {\"from\": \"steps.N.name\"}";
    let mut entries = fields.iter();
    let (Some((tag, inner)), None) = (entries.next(), entries.next()) else {
        return Err((path.into(), expected.into()));
    };
    match (tag.as_str(), inner) {
        ("bytes_hex", Node::Text(hex)) => {
            decode_hex(hex).map(Value::Bytes).map_err(|e| (format!("{path}.bytes_hex"), e))
        }
        ("bytes_hex", other) => {
            Err((format!("{path}.bytes_hex"), format!("expected a string of hex digits, found {}", other.kind())))
        }
        ("null", Node::Bool(true)) => Ok(Value::Null),
        ("null", _) => Err((format!("{path}.null"), "expected `true`".into())),
        _ => Err((path.into(), format!("{expected}, found key {tag:?}"))),
    }
}

fn only_keys(fields: &BTreeMap<String, Node>, path: &str, allowed: &[&str]) -> Result<(), Problem> {
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(unknown) => {
            let at = if path.is_empty() { String::new() } else { path.to_owned() };
            Err((at, format!("unknown field {unknown:?} (expected {})", allowed.join(", "))))
        }
    }
}

/// `.name` for plain names, `["odd name"]` otherwise.
fn key_path(name: &str) -> String {
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain { format!(".{name}") } else { format!("[{name:?}]") }
}

/// Hex digits (either case, even count, no separators) to bytes.
pub fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", hex.len()));
    }
    let digit = |i: usize, c: u8| {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| format!("{:?} at position {i} is not a hex digit", c as char))
    };
    let bytes = hex.as_bytes();
    (0..bytes.len() / 2).map(|n| Ok(digit(2 * n, bytes[2 * n])? << 4 | digit(2 * n + 1, bytes[2 * n + 1])?)).collect()
}

/// Bytes as lowercase hex digits.
#[cfg(test)]
fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> SagaFile {
        parse(text, "saga.txt").unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        parse(text, "saga.txt").unwrap_err().to_string()
    }

    /// A `.json` file is JSON whatever its first character (a JSON error names the line and
    /// column, not a TOML one); a `.toml` file is TOML even when it starts with `{`.
    #[test]
    fn the_file_name_decides_the_format() {
        let array_first = "[1]";
        let json = parse(array_first, "saga.json").unwrap_err().to_string();
        assert!(json.contains("saga.json"), "{json}");
        assert!(!json.contains("TOML"), "read as TOML: {json}");
        let saga = r#"  
{"id": "s-1", "steps": [{"action": "a", "params": {}}]}"#;
        assert_eq!(parse(saga, "saga.JSON").unwrap().steps.len(), 1);
        let toml = parse("{", "saga.toml").unwrap_err().to_string();
        assert!(toml.contains("TOML") || toml.contains("toml"), "{toml}");
    }

    fn params(file: &SagaFile, step: usize) -> Vec<(&str, &Value)> {
        file.steps[step].params.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    /// The JSON example of docs/cli.md, with every value type.
    #[test]
    fn json_saga_with_every_value_type() {
        let file = ok(r#"
            {"id": "nightly-1", "steps": [
              {"action": "record_execution", "params": {"run_id": "r1", "rows": 10}},
              {"action": "x", "params": {"f": 1.0, "g": -2.5e3, "b": false, "n": null,
                                          "raw": {"bytes_hex": "00FFa0"}, "n2": {"null": true}}},
              {"action": "no_params"}
            ]}"#);
        assert_eq!(file.id.as_deref(), Some("nightly-1"));
        assert_eq!(file.steps.len(), 3);
        assert_eq!(file.steps[0].action, "record_execution");
        assert_eq!(params(&file, 0), vec![("rows", &Value::Int(10)), ("run_id", &Value::Text("r1".into()))]);
        let p = &file.steps[1].params;
        assert_eq!(p["f"], Value::Float(1.0), "a number with a point is a float");
        assert_eq!(p["g"], Value::Float(-2500.0));
        assert_eq!(p["b"], Value::Bool(false));
        assert_eq!(p["n"], Value::Null);
        assert_eq!(p["n2"], Value::Null);
        assert_eq!(p["raw"], Value::Bytes(vec![0x00, 0xff, 0xa0]));
        assert!(file.steps[2].params.is_empty());
    }

    /// The TOML form of the same saga reads to the same definition.
    #[test]
    fn toml_saga_matches_json() {
        let toml = ok(r#"
            id = "nightly-1"
            [[steps]]
            action = "record_execution"
            params = { run_id = "r1", rows = 10, ratio = 0.5, raw = { bytes_hex = "0a0b" }, nothing = { null = true } }
            [[steps]]
            action = "write_artifact"
            [steps.params]
            run_id = "r1"
        "#);
        let json = ok(r#"{"id": "nightly-1", "steps": [
            {"action": "record_execution", "params": {"run_id": "r1", "rows": 10, "ratio": 0.5,
                                                       "raw": {"bytes_hex": "0a0b"}, "nothing": null}},
            {"action": "write_artifact", "params": {"run_id": "r1"}}]}"#);
        assert_eq!(toml, json);
    }

    /// `{"from": "steps.N.name"}` (TOML `{ from = "…" }`) takes an earlier step's output: it
    /// goes to the step's references, not its values (issue 11 item 1).
    #[test]
    fn a_from_value_is_a_reference_to_an_earlier_output() {
        let json =
            ok(r#"{"steps": [{"action": "a"}, {"action": "b", "params": {"id": {"from": "steps.0.id"}, "n": 1}}]}"#);
        let toml = ok(
            "[[steps]]\naction = \"a\"\n[[steps]]\naction = \"b\"\nparams = { id = { from = \"steps.0.id\" }, n = 1 }\n",
        );
        assert_eq!(json, toml);
        let step = &json.steps[1];
        assert_eq!(step.from, BTreeMap::from([("id".to_owned(), "steps.0.id".to_owned())]));
        assert_eq!(step.params, BTreeMap::from([("n".to_owned(), Value::Int(1))]));
    }

    /// No id is fine (the CLI fills one in); a BOM and leading blanks do not hide JSON.
    #[test]
    fn id_is_optional_and_detection_skips_blanks() {
        let file = ok("\u{feff}\n  {\"steps\": [{\"action\": \"a\"}]}");
        assert_eq!(file.id, None);
    }

    /// Syntax errors name the file and the position.
    #[test]
    fn syntax_errors_name_file_and_position() {
        let e = err("{\"steps\": [\n  {\"action\": \"a\",}\n]}");
        assert!(e.starts_with("saga.txt: invalid JSON at line 2, column 18: trailing comma"), "{e}");
        let e = err("steps = [\n{ action = }\n");
        assert!(e.starts_with("saga.txt: invalid TOML: ") && e.contains("line 2"), "{e}");
        assert_eq!(err("  \n"), "saga.txt: the file is empty (expected a saga in JSON or TOML)");
    }

    /// `saga_id` (the proto's name, the HTTP API's) is the id as `id` is; both may be given
    /// only if they agree. `parse_json` reads JSON whatever the name says.
    #[test]
    fn saga_id_is_the_id_too() {
        let both = r#"{"id": "a", "saga_id": "a", "steps": [{"action": "x"}]}"#;
        assert_eq!(parse(both, "s.json").unwrap().id.as_deref(), Some("a"));
        let proto = r#"{"saga_id": "p-1", "steps": [{"action": "x"}]}"#;
        assert_eq!(parse(proto, "s.json").unwrap().id.as_deref(), Some("p-1"));
        let e = parse(r#"{"id": "a", "saga_id": "b", "steps": [{"action": "x"}]}"#, "s.json").unwrap_err();
        assert_eq!(e.to_string(), r#"s.json: saga_id: "b" differs from id "a": give one of them"#);
        let e = parse(r#"{"saga_id": 7, "steps": [{"action": "x"}]}"#, "s.json").unwrap_err();
        assert_eq!(e.to_string(), "s.json: saga_id: expected a string, found an integer");
        assert_eq!(parse_json(proto, "request body").unwrap().id.as_deref(), Some("p-1"));
        let e = parse_json("steps = []", "request body").unwrap_err().to_string();
        assert!(e.starts_with("request body: invalid JSON at line 1"), "{e}");
        assert!(parse_json("", "request body").unwrap_err().to_string().starts_with("request body: empty"));
    }

    /// Shape errors name the path inside the document and what is wrong.
    #[test]
    fn shape_errors_name_the_path() {
        let cases = [
            (r#"{"stepz": []}"#, r#"saga.txt: unknown field "stepz" (expected id, saga_id, steps)"#),
            (r#"{"id": "a"}"#, "saga.txt: missing field `steps` (a list of {action, params})"),
            (r#"{"steps": []}"#, "saga.txt: steps: a saga needs at least one step"),
            (r#"{"steps": {"action": "a"}}"#, "saga.txt: steps: expected an array of steps, found a table/object"),
            (r#"{"id": 7, "steps": [{"action": "a"}]}"#, "saga.txt: id: expected a string, found an integer"),
            (r#"{"steps": [{"action": "a"}, {"params": {}}]}"#, "saga.txt: steps[1]: missing field `action`"),
            (r#"{"steps": [{"action": 3}]}"#, "saga.txt: steps[0].action: expected a string, found an integer"),
            (
                r#"{"steps": [{"action": "a", "param": {}}]}"#,
                r#"saga.txt: steps[0]: unknown field "param" (expected action, params)"#,
            ),
            (
                r#"{"steps": [{"action": "a", "params": [1]}]}"#,
                "saga.txt: steps[0].params: expected a table/object of parameters, found an array",
            ),
            (
                r#"{"steps": [{"action": "a"}, {"action": "b", "params": {"rows": 9223372036854775808}}]}"#,
                "saga.txt: steps[1].params.rows: integer 9223372036854775808 is out of range for int (64-bit signed)",
            ),
            (
                r#"{"steps": [{"action": "a", "params": {"ids": [1, 2]}}]}"#,
                "saga.txt: steps[0].params.ids: an array is not a parameter type (int, float, text, bool, bytes or null)",
            ),
            (
                r#"{"steps": [{"action": "a", "params": {"odd key": {"bytes_hex": "abc"}}}]}"#,
                r#"saga.txt: steps[0].params["odd key"].bytes_hex: odd number of hex digits (3)"#,
            ),
            (
                r#"{"steps": [{"action": "a", "params": {"x": {"bytes_hex": "zz"}}}]}"#,
                "saga.txt: steps[0].params.x.bytes_hex: 'z' at position 0 is not a hex digit",
            ),
            (
                r#"{"steps": [{"action": "a", "params": {"x": {"base64": "zz"}}}]}"#,
                r#"saga.txt: steps[0].params.x: a table/object as a value must be {"bytes_hex": "<hex>"}, {"null": true} or {"from": "steps.N.name"}, found key "base64""#,
            ),
            (
                r#"{"steps": [{"action": "a", "params": {"x": {"from": 5}}}]}"#,
                r#"saga.txt: steps[0].params.x.from: expected "steps.N.name", found"#,
            ),
            (
                r#"{"steps": [{"action": "a", "params": {"x": {"null": false}}}]}"#,
                "saga.txt: steps[0].params.x.null: expected `true`",
            ),
            ("[1]", r#"saga.txt: unknown field "1" (expected id, saga_id, steps)"#),
        ];
        for (text, expected) in cases {
            let e = err(text);
            assert!(e.starts_with(expected), "{text}\n got: {e}\nwant: {expected}");
        }
        let e = err("[[steps]]\naction = \"a\"\nparams = { at = 1979-05-27T07:32:00Z }\n");
        assert_eq!(
            e,
            "saga.txt: steps[0].params.at: date/time 1979-05-27T07:32:00Z is not a parameter type; write it as a string"
        );
    }

    /// Hex decodes either case and round-trips through the encoder.
    #[test]
    fn hex_round_trips() {
        assert_eq!(decode_hex("").unwrap(), Vec::<u8>::new());
        assert_eq!(decode_hex("DeadBEEF").unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_hex(&encode_hex(&all)).unwrap(), all);
    }
}
