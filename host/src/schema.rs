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
/// The refusal names the first field that does not fit, where it can.
pub fn encode(schema: &OwnedNamedType, value: &Value) -> Result<Vec<u8>, String> {
    let mismatch = || match misfit(&schema.ty, value, "") {
        Some(field) => format!("{field}; expected {}", schema.to_pseudocode()),
        None => format!("expected {}", schema.to_pseudocode()),
    };
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

/// The first place in `value` that does not fit `ty`, as a phrase naming
/// the field (``field `b` is missing``, ``field `a` is not of type i64:
/// "x"``); `None` outside any struct's field, or where the walk cannot
/// tell (tuples, maps, enums), so the caller's general message stands.
fn misfit(ty: &OwnedDataModelType, value: &Value, path: &str) -> Option<String> {
    use OwnedDataModelType as T;
    let field = |name: &str| match path {
        "" => name.to_owned(),
        path => format!("{path}.{name}"),
    };
    let unless = |fits: bool, what: &str| {
        if fits || path.is_empty() {
            return None;
        }
        let shown = value.to_string();
        let shown = match shown.char_indices().nth(MISFIT_QUOTE) {
            Some((cut, _)) => format!("{}...", &shown[..cut]),
            None => shown,
        };
        Some(format!("field `{path}` is not {what}: {shown}"))
    };
    let int =
        |fits: Option<bool>, name: &str| unless(fits == Some(true), &format!("of type {name}"));
    match ty {
        T::Bool => unless(value.is_boolean(), "true or false"),
        T::U8 => int(value.as_u64().map(|n| u8::try_from(n).is_ok()), "u8"),
        T::U16 => int(value.as_u64().map(|n| u16::try_from(n).is_ok()), "u16"),
        T::U32 => int(value.as_u64().map(|n| u32::try_from(n).is_ok()), "u32"),
        T::U64 | T::Usize | T::U128 => int(value.as_u64().map(|_| true), "u64"),
        T::I8 => int(value.as_i64().map(|n| i8::try_from(n).is_ok()), "i8"),
        T::I16 => int(value.as_i64().map(|n| i16::try_from(n).is_ok()), "i16"),
        T::I32 => int(value.as_i64().map(|n| i32::try_from(n).is_ok()), "i32"),
        T::I64 | T::Isize | T::I128 => int(value.as_i64().map(|_| true), "i64"),
        T::F32 | T::F64 => unless(value.is_number(), "a number"),
        T::String => unless(value.is_string(), "a string"),
        T::Option(inner) if !value.is_null() => misfit(&inner.ty, value, path),
        T::NewtypeStruct(inner) => misfit(&inner.ty, value, path),
        T::Seq(inner) => match value.as_array() {
            None => unless(false, "an array"),
            Some(items) => items
                .iter()
                .enumerate()
                .find_map(|(at, item)| misfit(&inner.ty, item, &format!("{path}[{at}]"))),
        },
        T::Struct(fields) => {
            let Some(object) = value.as_object() else {
                return unless(false, "an object");
            };
            if let Some(missing) = fields.iter().find(|f| !object.contains_key(&*f.name)) {
                return Some(format!("field `{}` is missing", field(&missing.name)));
            }
            if let Some(extra) = object
                .keys()
                .find(|key| !fields.iter().any(|f| f.name == **key))
            {
                return Some(format!("field `{}` is not one it takes", field(extra)));
            }
            fields
                .iter()
                .find_map(|f| misfit(&f.ty.ty, &object[&*f.name], &field(&f.name)))
        }
        _ => None,
    }
}

/// Characters of a value a [`misfit`] phrase quotes.
const MISFIT_QUOTE: usize = 40;

/// Most JSON values one decode may produce. Postcard trusts declared
/// lengths and encodes unit values as nothing, so a few bytes can declare
/// billions of values; past this, nothing is decoded.
pub const MAX_DECODED_VALUES: usize = 100_000;
/// Most JSON text (compact, counted from above) one decode may produce.
pub const MAX_DECODED_TEXT: usize = 4 * 1024 * 1024;

/// Why postcard bytes were not rendered as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the bytes do not decode as {0}")]
    Mismatch(String),
    #[error("more than {MAX_DECODED_VALUES} values")]
    TooManyValues,
    #[error("more than {MAX_DECODED_TEXT} bytes of JSON")]
    TooMuchText,
}

impl DecodeError {
    /// The bytes may well decode, but into more than a decode may produce.
    pub fn is_too_large(&self) -> bool {
        !matches!(self, DecodeError::Mismatch(_))
    }
}

/// Render postcard bytes as JSON through `schema`, within
/// [`MAX_DECODED_VALUES`] and [`MAX_DECODED_TEXT`]: a dry run counts what
/// decoding would produce, allocating nothing, and stops at the bound.
pub fn decode(schema: &OwnedNamedType, bytes: &[u8]) -> Result<Value, DecodeError> {
    let mismatch = || DecodeError::Mismatch(schema.to_pseudocode());
    let mut budget = Budget {
        values: MAX_DECODED_VALUES,
        text: MAX_DECODED_TEXT,
    };
    measure(&schema.ty, bytes, &mut budget).map_err(|stop| match stop {
        Stop::Mismatch => mismatch(),
        Stop::TooManyValues => DecodeError::TooManyValues,
        Stop::TooMuchText => DecodeError::TooMuchText,
    })?;
    postcard_dyn::from_slice_dyn(schema, bytes).map_err(|_| mismatch())
}

/// What a decode may still produce.
struct Budget {
    values: usize,
    text: usize,
}

enum Stop {
    Mismatch,
    TooManyValues,
    TooMuchText,
}

impl Budget {
    /// `count` values of at most `text` characters each (separators included).
    fn spend(&mut self, count: usize, text: usize) -> Result<(), Stop> {
        self.values = self.values.checked_sub(count).ok_or(Stop::TooManyValues)?;
        self.text_only(count.saturating_mul(text))
    }

    /// Text that is not a value of its own: an object's key.
    fn text_only(&mut self, text: usize) -> Result<(), Stop> {
        self.text = self.text.checked_sub(text).ok_or(Stop::TooMuchText)?;
        Ok(())
    }
}

// Upper bounds on a value's JSON text, its trailing comma included.
const NULL_TEXT: usize = 5;
const BOOL_TEXT: usize = 6;
const BRACKETS_TEXT: usize = 3;
const fn int_text(max_len: usize) -> usize {
    max_len + 2
}
const FLOAT_TEXT: usize = 26;

/// Walk `data` as `ty` the way `postcard_dyn::from_slice_dyn` does,
/// charging `budget` for every value it would produce; returns the bytes
/// left. Every step that produces a value charges at least one, so the walk
/// ends within the budget whatever lengths the bytes declare.
fn measure<'a>(
    ty: &OwnedDataModelType,
    data: &'a [u8],
    budget: &mut Budget,
) -> Result<&'a [u8], Stop> {
    use OwnedDataModelType as T;
    /// An integer: a varint of at most `max_bytes`, at most `digits` long.
    fn int<'a>(
        data: &'a [u8],
        max_bytes: usize,
        digits: usize,
        budget: &mut Budget,
    ) -> Result<&'a [u8], Stop> {
        let (_, rest) = take_varint(data, max_bytes)?;
        budget.spend(1, int_text(digits))?;
        Ok(rest)
    }
    match ty {
        T::Bool => {
            let (byte, rest) = take(data, 1)?;
            if byte[0] > 1 {
                return Err(Stop::Mismatch);
            }
            budget.spend(1, BOOL_TEXT)?;
            Ok(rest)
        }
        T::U8 | T::I8 => {
            let (_, rest) = take(data, 1)?;
            budget.spend(1, int_text(4))?;
            Ok(rest)
        }
        T::U16 | T::I16 => int(data, 3, 6, budget),
        T::U32 | T::I32 => int(data, 5, 11, budget),
        T::U64 | T::I64 | T::Usize | T::Isize => int(data, 10, 20, budget),
        T::U128 | T::I128 => int(data, 19, 40, budget),
        T::F32 | T::F64 => {
            let (_, rest) = take(data, if matches!(ty, T::F32) { 4 } else { 8 })?;
            budget.spend(1, FLOAT_TEXT)?;
            Ok(rest)
        }
        T::String => {
            let (len, rest) = take_len(data)?;
            let (text, rest) = take(rest, len)?;
            budget.spend(1, json_string_len(text))?;
            Ok(rest)
        }
        T::ByteArray => {
            let (len, rest) = take_len(data)?;
            let (_, rest) = take(rest, len)?;
            budget.spend(1, BRACKETS_TEXT)?;
            budget.spend(len, int_text(3))?;
            Ok(rest)
        }
        T::Option(inner) => {
            let (tag, rest) = take(data, 1)?;
            match tag[0] {
                0 => budget.spend(1, NULL_TEXT).map(|()| rest),
                1 => measure(&inner.ty, rest, budget),
                _ => Err(Stop::Mismatch),
            }
        }
        T::Unit | T::UnitStruct => budget.spend(1, NULL_TEXT).map(|()| data),
        T::NewtypeStruct(inner) => measure(&inner.ty, data, budget),
        T::Seq(inner) => {
            let (len, mut rest) = take_len(data)?;
            budget.spend(1, BRACKETS_TEXT)?;
            for _ in 0..len {
                rest = measure(&inner.ty, rest, budget)?;
            }
            Ok(rest)
        }
        T::Tuple(items) | T::TupleStruct(items) => measure_tuple(items, data, budget),
        T::Map { key, val } => {
            // postcard-dyn decodes string keys only.
            if key.ty != T::String {
                return Err(Stop::Mismatch);
            }
            let (len, mut rest) = take_len(data)?;
            budget.spend(1, BRACKETS_TEXT)?;
            for _ in 0..len {
                let (key_len, after) = take_len(rest)?;
                let (key, after) = take(after, key_len)?;
                budget.text_only(json_string_len(key))?;
                rest = measure(&val.ty, after, budget)?;
            }
            Ok(rest)
        }
        T::Struct(fields) => measure_struct(fields, data, budget),
        T::Enum(variants) => {
            let (index, rest) = take_len(data)?;
            let variant = variants.get(index).ok_or(Stop::Mismatch)?;
            let name = json_string_len(variant.name.as_bytes());
            match &variant.ty {
                OwnedDataModelVariant::UnitVariant => budget.spend(1, name).map(|()| rest),
                OwnedDataModelVariant::NewtypeVariant(inner) => {
                    budget.spend(1, BRACKETS_TEXT + name)?;
                    measure(&inner.ty, rest, budget)
                }
                OwnedDataModelVariant::TupleVariant(items) => {
                    budget.spend(1, BRACKETS_TEXT + name)?;
                    measure_tuple(items, rest, budget)
                }
                OwnedDataModelVariant::StructVariant(fields) => {
                    budget.spend(1, BRACKETS_TEXT + name)?;
                    measure_struct(fields, rest, budget)
                }
            }
        }
        // Refused by `parse_schema`, and postcard-dyn cannot decode them.
        T::Char | T::Schema => Err(Stop::Mismatch),
    }
}

/// A tuple of none is `null`, of one is that value, of more an array.
fn measure_tuple<'a>(
    items: &[OwnedNamedType],
    data: &'a [u8],
    budget: &mut Budget,
) -> Result<&'a [u8], Stop> {
    match items {
        [] => budget.spend(1, NULL_TEXT).map(|()| data),
        [item] => measure(&item.ty, data, budget),
        items => {
            budget.spend(1, BRACKETS_TEXT)?;
            items
                .iter()
                .try_fold(data, |rest, item| measure(&item.ty, rest, budget))
        }
    }
}

fn measure_struct<'a>(
    fields: &[postcard_schema::schema::owned::OwnedNamedValue],
    data: &'a [u8],
    budget: &mut Budget,
) -> Result<&'a [u8], Stop> {
    budget.spend(1, BRACKETS_TEXT)?;
    fields.iter().try_fold(data, |rest, field| {
        budget.text_only(json_string_len(field.name.as_bytes()) + 1)?;
        measure(&field.ty.ty, rest, budget)
    })
}

fn take(data: &[u8], len: usize) -> Result<(&[u8], &[u8]), Stop> {
    if data.len() < len {
        return Err(Stop::Mismatch);
    }
    Ok(data.split_at(len))
}

/// A varint of at most `max_bytes` bytes (postcard's limit for its type).
fn take_varint(data: &[u8], max_bytes: usize) -> Result<(u128, &[u8]), Stop> {
    let mut value = 0u128;
    for (at, byte) in data.iter().take(max_bytes).enumerate() {
        value |= u128::from(byte & 0x7f) << (7 * at);
        if byte & 0x80 == 0 {
            return Ok((value, &data[at + 1..]));
        }
    }
    Err(Stop::Mismatch)
}

/// A length or an enum's variant index: a usize varint.
fn take_len(data: &[u8]) -> Result<(usize, &[u8]), Stop> {
    let (value, rest) = take_varint(data, 10)?;
    Ok((usize::try_from(value).map_err(|_| Stop::Mismatch)?, rest))
}

/// The length of `text` as a JSON string: quotes, escapes and a separator.
fn json_string_len(text: &[u8]) -> usize {
    text.iter()
        .map(|byte| match byte {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
        + 3
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

    #[derive(Serialize, Deserialize, Schema)]
    struct Outer {
        name: String,
        pairs: Vec<Pair>,
        small: Option<u8>,
    }

    #[test]
    fn a_refusal_names_the_field() {
        let refused = |value| encode(&schema_of::<Outer>(), &value).unwrap_err();
        let pairs = json!([{"a": 1, "b": 2}]);
        let missing = refused(json!({"name": "x", "pairs": pairs}));
        assert!(
            missing.starts_with("field `small` is missing; expected "),
            "{missing}"
        );
        let extra = refused(json!({"name": "x", "pairs": pairs, "small": 1, "big": 2}));
        assert!(
            extra.starts_with("field `big` is not one it takes;"),
            "{extra}"
        );
        let nested = refused(json!({"name": "x", "pairs": [{"a": 1, "b": "2"}], "small": null}));
        assert!(
            nested.starts_with("field `pairs[0].b` is not of type i64: \"2\";"),
            "{nested}"
        );
        let range = refused(json!({"name": "x", "pairs": [], "small": 300}));
        assert!(
            range.starts_with("field `small` is not of type u8: 300;"),
            "{range}"
        );
        // No field to name: the schema alone.
        let whole = encode(&schema_of::<String>(), &json!(42)).unwrap_err();
        assert!(whole.starts_with("expected "), "{whole}");
    }

    #[test]
    fn decodes_back_to_json() {
        let bytes = postcard::to_stdvec(&Pair { a: 5, b: 6 }).unwrap();
        assert_eq!(
            decode(&schema_of::<Pair>(), &bytes).unwrap(),
            json!({"a": 5, "b": 6})
        );
    }

    /// A varint length of `u64::MAX`: ten bytes, as unitbomb returns.
    const HUGE_LENGTH: [u8; 10] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

    #[test]
    fn a_sequence_of_units_declaring_billions_stops_at_the_bound() {
        #[derive(Serialize, Deserialize, Schema)]
        struct Nothing;
        #[derive(Serialize, Deserialize, Schema)]
        struct Empty {}
        for schema in [
            schema_of::<Vec<()>>(),
            schema_of::<Vec<Nothing>>(),
            schema_of::<Vec<Empty>>(),
            schema_of::<Vec<((), ())>>(),
        ] {
            let started = std::time::Instant::now();
            assert_eq!(
                decode(&schema, &HUGE_LENGTH),
                Err(DecodeError::TooManyValues),
                "{}",
                schema.to_pseudocode()
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
    }

    #[test]
    fn nested_sequences_of_units_share_one_bound() {
        // Each inner sequence is small enough alone; together they are not.
        let inner = MAX_DECODED_VALUES / 4;
        let count = 8usize;
        let mut bytes = postcard::to_stdvec(&count).unwrap();
        for _ in 0..count {
            bytes.extend(postcard::to_stdvec(&inner).unwrap());
        }
        assert_eq!(
            decode(&schema_of::<Vec<Vec<()>>>(), &bytes),
            Err(DecodeError::TooManyValues)
        );
        // One length per level: outer, middle, and the first innermost.
        let deep = HUGE_LENGTH.repeat(3);
        assert_eq!(
            decode(&schema_of::<Vec<Vec<Vec<()>>>>(), &deep),
            Err(DecodeError::TooManyValues)
        );
    }

    #[test]
    fn within_the_bound_units_decode() {
        let bytes = postcard::to_stdvec(&vec![(); 3]).unwrap();
        assert_eq!(
            decode(&schema_of::<Vec<()>>(), &bytes).unwrap(),
            json!([null, null, null])
        );
        let bytes = postcard::to_stdvec(&vec![(); MAX_DECODED_VALUES - 1]).unwrap();
        assert!(decode(&schema_of::<Vec<()>>(), &bytes).is_ok());
    }

    #[test]
    fn text_is_bounded_too() {
        // Few values, each a long string.
        let long = "x".repeat(MAX_DECODED_TEXT / 4);
        let bytes = postcard::to_stdvec(&vec![long.clone(); 5]).unwrap();
        assert_eq!(
            decode(&schema_of::<Vec<String>>(), &bytes),
            Err(DecodeError::TooMuchText)
        );
        let bytes = postcard::to_stdvec(&vec![long; 3]).unwrap();
        assert!(decode(&schema_of::<Vec<String>>(), &bytes).is_ok());
    }

    #[test]
    fn short_or_wrong_bytes_are_a_mismatch_not_a_panic() {
        assert!(matches!(
            decode(&schema_of::<Vec<u8>>(), &HUGE_LENGTH),
            Err(DecodeError::Mismatch(_))
        ));
        assert!(matches!(
            decode(&schema_of::<Pair>(), &[0x80]),
            Err(DecodeError::Mismatch(_))
        ));
        assert!(matches!(
            decode(&schema_of::<bool>(), &[2]),
            Err(DecodeError::Mismatch(_))
        ));
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
