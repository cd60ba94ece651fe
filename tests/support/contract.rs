//! The AsyncAPI document (`src/services/order/asyncapi.json`) as a checker of
//! records: each topic's channel lists the messages it may carry, and a record
//! passes when one of them accepts its key, headers and value.
//!
//! The document leaves objects open, as a contract for consumers must (they
//! ignore what they do not know). Checking the services' own records, every
//! object schema is closed instead: a field or header the code writes and the
//! document does not name fails, as does one the document requires and the code
//! no longer writes. So the document cannot drift from the code either way.

use std::collections::BTreeMap;
use std::path::Path;

use jsonschema::{Draft, Validator};
use serde_json::Value;

/// The checks of one message of a channel.
struct MessageCheck {
    name: String,
    key: Option<Validator>,
    headers: Option<Validator>,
    payload: Option<Validator>,
}

/// The document's channels by topic, each with its messages' checks.
pub struct Contract {
    channels: BTreeMap<String, Vec<MessageCheck>>,
}

impl Contract {
    /// The document the order service serves.
    pub fn load() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/services/order/asyncapi.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Self::from_document(serde_json::from_str(&text).expect("the AsyncAPI document is JSON"))
    }

    /// The checks `document` describes.
    pub fn from_document(document: Value) -> Self {
        assert_eq!(document["asyncapi"], "3.0.0", "an AsyncAPI 3 document");
        let mut strict = document.clone();
        close_objects(&mut strict);
        let mut channels = BTreeMap::new();
        for (id, channel) in document["channels"].as_object().expect("channels") {
            let address = channel["address"]
                .as_str()
                .unwrap_or_else(|| panic!("channel {id} has no address"));
            let mut checks = Vec::new();
            for message in channel["messages"].as_object().expect("messages").values() {
                let pointer = message["$ref"].as_str().expect("messages are references");
                let name = pointer.rsplit('/').next().unwrap().to_owned();
                let resolved = document
                    .pointer(pointer.trim_start_matches('#'))
                    .unwrap_or_else(|| panic!("{pointer} does not resolve"));
                let part = |path: &str, present: bool| {
                    present.then(|| validator(&strict, &format!("{pointer}/{path}")))
                };
                checks.push(MessageCheck {
                    key: part(
                        "bindings/kafka/key",
                        !resolved["bindings"]["kafka"]["key"].is_null(),
                    ),
                    headers: part("headers", !resolved["headers"].is_null()),
                    payload: part("payload", !resolved["payload"].is_null()),
                    name,
                });
            }
            channels.insert(address.to_owned(), checks);
        }
        Self { channels }
    }

    /// The topics the document describes.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    /// The name of the message of `topic`'s channel that a record matches,
    /// or what each message found wrong with it.
    pub fn check(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        headers: &BTreeMap<String, Vec<u8>>,
        value: Option<&[u8]>,
    ) -> Result<String, String> {
        let checks = self
            .channels
            .get(topic)
            .ok_or_else(|| format!("the document has no channel for topic {topic}"))?;
        let key = key.map_or(Value::Null, |k| {
            let text = String::from_utf8_lossy(k);
            // A JSON key (the coordination topic's) is checked as the object it is.
            match serde_json::from_str::<Value>(&text) {
                Ok(object @ Value::Object(_)) => object,
                _ => Value::String(text.into_owned()),
            }
        });
        let headers = Value::Object(
            headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value::String(String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect(),
        );
        let value = value.map_or(Value::Null, |v| {
            serde_json::from_slice(v)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into_owned()))
        });
        let mut wrong = Vec::new();
        for check in checks {
            let mut errors = Vec::new();
            for (part, validator, instance) in [
                ("key", &check.key, &key),
                ("headers", &check.headers, &headers),
                ("value", &check.payload, &value),
            ] {
                if let Some(v) = validator {
                    errors.extend(
                        v.iter_errors(instance)
                            .map(|e| format!("{part}{}: {e}", e.instance_path())),
                    );
                }
            }
            if errors.is_empty() {
                return Ok(check.name.clone());
            }
            wrong.push(format!("as {}: {}", check.name, errors.join("; ")));
        }
        Err(format!(
            "a record of {topic} matches no message: {}",
            wrong.join(" | ")
        ))
    }
}

/// A validator of the schema at `pointer` (`#/components/...`) of `document`,
/// whose references resolve within it.
fn validator(document: &Value, pointer: &str) -> Validator {
    let mut root = document.clone();
    root.as_object_mut()
        .unwrap()
        .insert("$ref".into(), Value::String(pointer.to_owned()));
    // AsyncAPI's schema format is a superset of JSON Schema draft 7.
    jsonschema::options()
        .with_draft(Draft::Draft7)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}"))
}

/// Closes every object schema that does not say whether it is open.
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("properties").is_some_and(Value::is_object)
                && !map.contains_key("additionalProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}
