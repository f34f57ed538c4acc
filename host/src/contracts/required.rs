//! Naming every missing required field of a request, not only the first one
//! serde stops at. The published JSON Schema (its `required` arrays) is the
//! list of what is required, so it cannot drift from the types.

use serde_json::error::Category;
use serde_json::Value;

use super::schema;

/// If `error` is serde's "missing field" error, an error naming every
/// required field absent from the request in `bytes`, as dotted paths
/// (`runtime.repoRoot`, `checkpoint.mode`) in schema order; the error's field
/// is the first of them. `None` for any other error.
pub(super) fn missing_fields_error(
    bytes: &[u8],
    error: &serde_path_to_error::Error<serde_json::Error>,
) -> Option<crate::Error> {
    if error.inner().classify() != Category::Data {
        return None;
    }
    let message = error.inner().to_string();
    let name = message.strip_prefix("missing field `")?.split('`').next()?;
    let (file, schema) = schema::all()
        .into_iter()
        .find(|(_, schema)| schema["title"] == "StepExecutionRequest")?;
    // The body's first JSON value, so a body with trailing data is still read.
    let value = serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok);
    let mut missing = Vec::new();
    if let Some(value) = &value {
        collect(&schema, &schema, value, "", &mut missing);
    }
    if missing.is_empty() {
        // The body is not whole JSON (or the walk disagrees with serde): name
        // the field serde found, at its path.
        let at = error.path().to_string();
        missing.push(join(at.trim_start_matches('.'), name));
    }
    let noun = if missing.len() == 1 {
        "field"
    } else {
        "fields"
    };
    let first = missing.first()?;
    Some(crate::Error::invalid(
        first,
        format!(
            "missing required {noun}: {} (see `baa-runner schema --kind request`, or schema/{file})",
            missing.join(", ")
        ),
    ))
}

/// Push the path of each required property that `value` lacks, then do the
/// same for each present property that is itself an object.
fn collect(root: &Value, schema: &Value, value: &Value, prefix: &str, out: &mut Vec<String>) {
    let (Some(schema), Some(object)) = (object_schema(root, schema), value.as_object()) else {
        return;
    };
    let required = schema["required"].as_array().into_iter().flatten();
    for key in required.filter_map(Value::as_str) {
        if !object.contains_key(key) {
            out.push(join(prefix, key));
        }
    }
    for (key, property) in schema["properties"].as_object().into_iter().flatten() {
        if let Some(value) = object.get(key) {
            collect(root, property, value, &join(prefix, key), out);
        }
    }
}

/// The object schema (one with `properties`) that `schema` stands for,
/// following a local `$ref` and looking into `anyOf`/`oneOf`/`allOf` branches
/// (an `Option<Struct>` is `anyOf: [{$ref}, {type: null}]`).
fn object_schema<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    if let Some(target) = schema["$ref"].as_str() {
        return object_schema(root, root.pointer(target.strip_prefix('#')?)?);
    }
    if schema.get("properties").is_some() {
        return Some(schema);
    }
    ["anyOf", "oneOf", "allOf"]
        .iter()
        .filter_map(|k| schema[*k].as_array())
        .flatten()
        .find_map(|branch| object_schema(root, branch))
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}
