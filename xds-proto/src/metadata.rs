//! Typed settings in xDS metadata: one namespace of `filter_metadata` written from, and read
//! back into, a serde type. weft's own (`weft_core::contract::xds`) are written by the control
//! plane's translator and read by the proxy with these two functions, so both sides share one
//! definition of every field.

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    envoy::config::core::v3::Metadata,
    google::protobuf::{ListValue, Struct, Value, value::Kind},
};

/// Metadata holding `settings` under `namespace` (a type that always serializes to a JSON
/// object, as weft's settings do).
pub fn write<T: Serialize>(namespace: &str, settings: &T) -> Metadata {
    let mut m = Metadata::default();
    let json = serde_json::to_value(settings).expect("settings serialize to JSON");
    if let Some(Kind::StructValue(s)) = to_proto(json).kind {
        m.filter_metadata.insert(namespace.into(), s);
    }
    m
}

/// The settings under `namespace` in `m` (their defaults when there are none; a field set to
/// null counts as absent). The error names the field that does not fit and why. Every field
/// of `T` must have a default: the field named is found by reading each one alone.
pub fn read<T: DeserializeOwned + Default>(
    namespace: &str,
    m: Option<&Metadata>,
) -> Result<T, String> {
    let Some(s) = m.and_then(|m| m.filter_metadata.get(namespace)) else {
        return Ok(T::default());
    };
    let mut fields = object(s);
    fields.retain(|_, v| !v.is_null());
    serde_json::from_value(serde_json::Value::Object(fields.clone())).map_err(|e| {
        // serde's message does not say where: each field alone tells which one it is.
        let field = fields.iter().find(|(k, v)| {
            let alone = serde_json::Map::from_iter([((*k).clone(), (*v).clone())]);
            serde_json::from_value::<T>(serde_json::Value::Object(alone)).is_err()
        });
        match field {
            Some((k, _)) => format!("metadata `{namespace}.{k}`: {e}"),
            None => format!("metadata `{namespace}`: {e}"),
        }
    })
}

/// JSON as a protobuf `Value`.
pub fn to_proto(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(to_proto).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.into_iter().map(|(k, v)| (k, to_proto(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// A protobuf `Value` as JSON. Protobuf has only doubles: a whole number comes back as an
/// integer, so that it reads into an integer field.
pub fn from_proto(v: &Value) -> serde_json::Value {
    match &v.kind {
        Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (*n as i64).into(),
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => object(s).into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(from_proto).collect(),
    }
}

fn object(s: &Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_proto(v)))
        .collect()
}
