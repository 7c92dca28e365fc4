//! Args and results as JSON at the edges, postcard inside: conversion in
//! both directions driven by the schema a plugin declares. A plugin's schema
//! is untrusted input, so it is bounded in size and depth before use.

use postcard_schema::schema::owned::{OwnedDataModelType, OwnedDataModelVariant, OwnedNamedType};
use serde_json::Value;

/// Largest encoded schema a plugin may declare.
pub const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Deepest nesting a declared schema may have.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Stack for decoding an untrusted schema: its nesting is not yet known.
const SCHEMA_DECODE_STACK: usize = 16 * 1024 * 1024;

/// Decode and vet a schema a plugin declared.
pub fn parse_schema(bytes: &[u8]) -> Result<OwnedNamedType, String> {
    if bytes.len() > MAX_SCHEMA_BYTES {
        return Err(format!(
            "the schema is {} bytes, more than the {MAX_SCHEMA_BYTES} allowed",
            bytes.len()
        ));
    }
    let bytes = bytes.to_vec();
    std::thread::Builder::new()
        .name("taskbox-schema".into())
        .stack_size(SCHEMA_DECODE_STACK)
        .spawn(move || {
            let schema: OwnedNamedType = postcard::from_bytes(&bytes)
                .map_err(|err| format!("the schema does not decode: {err}"))?;
            check_type(&schema, 0)?;
            Ok(schema)
        })
        .map_err(|err| format!("cannot start a thread to read the schema: {err}"))?
        .join()
        .map_err(|_| "reading the schema failed".to_owned())?
}

fn check_type(ty: &OwnedNamedType, depth: usize) -> Result<(), String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "the schema nests deeper than {MAX_SCHEMA_DEPTH} levels"
        ));
    }
    let next = depth + 1;
    match &ty.ty {
        // Types taskbox cannot convert to and from JSON.
        OwnedDataModelType::Schema | OwnedDataModelType::Char => Err(format!(
            "the schema uses `{}`, which taskbox does not support",
            ty.name
        )),
        OwnedDataModelType::Option(inner)
        | OwnedDataModelType::NewtypeStruct(inner)
        | OwnedDataModelType::Seq(inner) => check_type(inner, next),
        OwnedDataModelType::Tuple(items) | OwnedDataModelType::TupleStruct(items) => {
            items.iter().try_for_each(|item| check_type(item, next))
        }
        OwnedDataModelType::Map { key, val } => {
            check_type(key, next)?;
            check_type(val, next)
        }
        OwnedDataModelType::Struct(fields) => fields
            .iter()
            .try_for_each(|field| check_type(&field.ty, next)),
        OwnedDataModelType::Enum(variants) => {
            variants.iter().try_for_each(|variant| match &variant.ty {
                OwnedDataModelVariant::UnitVariant => Ok(()),
                OwnedDataModelVariant::NewtypeVariant(inner) => check_type(inner, next),
                OwnedDataModelVariant::TupleVariant(items) => {
                    items.iter().try_for_each(|item| check_type(item, next))
                }
                OwnedDataModelVariant::StructVariant(fields) => fields
                    .iter()
                    .try_for_each(|field| check_type(&field.ty, next)),
            })
        }
        _ => Ok(()),
    }
}

/// Turn JSON into the postcard bytes `schema` describes, refusing anything
/// that does not fit exactly (extra fields, values where none are taken).
pub fn encode(schema: &OwnedNamedType, value: &Value) -> Result<Vec<u8>, String> {
    let mismatch = || format!("expected {}", schema.to_pseudocode());
    let bytes = postcard_dyn::to_stdvec_dyn(schema, value).map_err(|_| mismatch())?;
    // The encoder skips what the schema does not mention; decoding back and
    // comparing catches that.
    let back = postcard_dyn::from_slice_dyn(schema, &bytes).map_err(|_| mismatch())?;
    if same_json(value, &back) {
        Ok(bytes)
    } else {
        Err(mismatch())
    }
}

/// Render postcard bytes as JSON through `schema`.
pub fn decode(schema: &OwnedNamedType, bytes: &[u8]) -> Result<Value, String> {
    postcard_dyn::from_slice_dyn(schema, bytes)
        .map_err(|_| format!("bytes do not decode as {}", schema.to_pseudocode()))
}

/// JSON equality where `1` and `1.0` are the same number.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(key, x)| ys.get(key).is_some_and(|y| same_json(x, y)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postcard_schema::Schema;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Serialize, Deserialize, Schema)]
    struct Pair {
        a: i64,
        b: i64,
    }

    fn schema_of<T: Schema + ?Sized>() -> OwnedNamedType {
        T::SCHEMA.into()
    }

    #[test]
    fn encodes_what_fits_and_matches_postcard() {
        let bytes = encode(&schema_of::<Pair>(), &json!({"a": 2, "b": -3})).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&Pair { a: 2, b: -3 }).unwrap());
        let text = encode(&schema_of::<String>(), &json!("hi")).unwrap();
        assert_eq!(text, postcard::to_stdvec("hi").unwrap());
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert!(encode(&schema_of::<String>(), &json!(42)).is_err());
        assert!(encode(&schema_of::<Pair>(), &json!({"a": 1})).is_err());
        assert!(encode(&schema_of::<Pair>(), &json!({"a": 1, "b": 2, "c": 3})).is_err());
        assert!(encode(&schema_of::<()>(), &json!(7)).is_err());
        assert!(encode(&schema_of::<u8>(), &json!(300)).is_err());
    }

    #[test]
    fn decodes_back_to_json() {
        let bytes = postcard::to_stdvec(&Pair { a: 5, b: 6 }).unwrap();
        assert_eq!(
            decode(&schema_of::<Pair>(), &bytes).unwrap(),
            json!({"a": 5, "b": 6})
        );
    }

    #[test]
    fn vets_declared_schemas() {
        let good = postcard::to_stdvec(&schema_of::<Pair>()).unwrap();
        assert_eq!(parse_schema(&good).unwrap(), schema_of::<Pair>());
        let with_char = postcard::to_stdvec(&schema_of::<char>()).unwrap();
        assert!(
            parse_schema(&with_char)
                .unwrap_err()
                .contains("does not support")
        );
        assert!(parse_schema(&[0xff; 8]).is_err());
        assert!(parse_schema(&vec![0; MAX_SCHEMA_BYTES + 1]).is_err());
    }

    #[test]
    fn refuses_deep_schemas() {
        let mut ty: OwnedNamedType = schema_of::<u8>();
        for _ in 0..(MAX_SCHEMA_DEPTH + 2) {
            ty = OwnedNamedType {
                name: "Option".into(),
                ty: OwnedDataModelType::Option(Box::new(ty)),
            };
        }
        let bytes = postcard::to_stdvec(&ty).unwrap();
        assert!(parse_schema(&bytes).unwrap_err().contains("deeper"));
    }
}
