//! The contract as published JSON Schema (draft 2020-12), generated from the
//! Rust types: `schema/` at the top of the repository holds the committed
//! copies (`baa-runner schema --write schema`), and a test keeps them equal.

use schemars::generate::SchemaSettings;

use super::{HostEvent, StepExecutionRequest, StepExecutionResult};

/// The published schemas: file name and document.
///
/// The request is described as the host reads it; the result and the host
/// events as the host writes them (schemars' serialize contract): a field
/// the host always writes is required even when reading tolerates its
/// absence (records of older versions), and one it omits when empty is not.
pub fn all() -> Vec<(&'static str, serde_json::Value)> {
    let reads = || SchemaSettings::draft2020_12().into_generator();
    let writes = || {
        SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator()
    };
    vec![
        (
            "step-execution-request.schema.json",
            reads()
                .into_root_schema_for::<StepExecutionRequest>()
                .to_value(),
        ),
        (
            "step-execution-result.schema.json",
            writes()
                .into_root_schema_for::<StepExecutionResult>()
                .to_value(),
        ),
        (
            "host-event.schema.json",
            writes().into_root_schema_for::<HostEvent>().to_value(),
        ),
    ]
}

/// A schema document as committed: pretty JSON with a final newline.
pub fn render(schema: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
