//! `unitbomb` (hostile): declares its result as `Vec<()>` and returns a
//! result of a few bytes whose length prefix claims as many unit values as
//! its args say (`18446744073709551615` at most). Units take no bytes, so
//! nothing in the result contradicts the claim: a decoder that trusts it
//! produces values until memory runs out. Proves that showing args and
//! results is bounded whatever a plugin's schema declares.

use taskbox_sdk::postcard_schema::schema::NamedType;
use taskbox_sdk::serde::{Serialize, Serializer};
use taskbox_sdk::{Schema, Task};

/// A `Vec<()>` as far as the schema says, but encoded as its length alone.
pub struct Units(u64);

impl Serialize for Units {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Postcard writes a sequence's length as a varint, exactly as it
        // writes a u64, and a unit as nothing at all.
        serializer.serialize_u64(self.0)
    }
}

impl Schema for Units {
    const SCHEMA: &'static NamedType = <Vec<()> as Schema>::SCHEMA;
}

struct UnitBomb;

impl Task for UnitBomb {
    type Args = u64;
    type Output = Units;

    fn run(count: u64) -> Result<Units, String> {
        Ok(Units(count))
    }
}

taskbox_sdk::export_task!(UnitBomb);
