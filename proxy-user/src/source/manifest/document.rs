//! One manifest document, deserialized as it streams: a list's items are reduced one by
//! one as the parser reaches them, so only one item is ever held as a value. Everything
//! else of the document is held as a value and handed to [`super::collect`].

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Parsed, collect};

/// Appends the objects of one document to the vector.
pub struct Seed<'a>(pub &'a mut Vec<Parsed>);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// The kinds whose `items` are objects of their own.
fn is_list(kind: Option<&str>) -> bool {
    matches!(kind, Some("List" | "ServiceList" | "EndpointSliceList"))
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a manifest object or list")
    }

    /// An empty document, e.g. after a trailing `---`.
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut fields = yaml_serde::Mapping::new();
        let mut items = Vec::new();
        while let Some(key) = map.next_key::<yaml_serde::Value>()? {
            if key.as_str() == Some("items") {
                map.next_value_seed(Items(&mut items))?;
            } else {
                let value: yaml_serde::Value = map.next_value()?;
                fields.insert(key, value);
            }
        }
        let object = yaml_serde::Value::Mapping(fields);
        if is_list(object.get("kind").and_then(|k| k.as_str())) {
            self.0.append(&mut items);
        } else {
            // Not a list: its `items`, if any, are no objects of ours (and no Service,
            // EndpointSlice or Node has a field of that name).
            collect(object, self.0);
        }
        Ok(())
    }

    // Anything else is a document of no kind, as a value would have said.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.other()
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.other()
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.other()
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.other()
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.other()
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.other()
    }
}

impl Seed<'_> {
    fn other<E>(self) -> Result<(), E> {
        self.0.push(Parsed::Other { kind: "".into() });
        Ok(())
    }
}

/// A list's `items`: each parsed into a value and collected at once.
struct Items<'a>(&'a mut Vec<Parsed>);

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<yaml_serde::Value>()? {
            collect(item, self.0);
        }
        Ok(())
    }

    // `items` that are not a sequence hold no objects.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}
