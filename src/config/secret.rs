//! `Secret`, a string that never shows itself, and the serde glue for optional settings.

use std::fmt;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A token or password. `Debug`, `Display` and `Serialize` all print `***`, so a secret cannot reach a log
/// line, an error message or `config check` output by accident; [`Secret::expose`] is the one way to read it.
///
/// `==` is a plain comparison, fine for comparing configurations; comparing a secret with a token a client
/// sent must use a constant-time comparison instead.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: call this only where the value is handed to the thing that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(SecretVisitor)
    }
}

/// Accepts only strings. serde's default wrong-type errors quote the value they found, so the visitor
/// names the kind of value instead: someone who pasted a numeric token unquoted must not see it echoed.
struct SecretVisitor;

impl SecretVisitor {
    fn wrong<E: de::Error>(&self, what: &str) -> Result<Secret, E> {
        Err(E::invalid_type(Unexpected::Other(what), self))
    }
}

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        self.wrong("a boolean")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        self.wrong("an integer")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        self.wrong("an integer")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        self.wrong("a float")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        // A TOML datetime reaches visitors as a map; it is not a secret's business to say which.
        self.wrong("a table or date")
    }
}

/// Values that can be blank, so that an empty string reads as "not set".
pub(crate) trait Blank {
    fn is_blank(&self) -> bool;
}

impl Blank for String {
    fn is_blank(&self) -> bool {
        self.is_empty()
    }
}

impl Blank for std::path::PathBuf {
    fn is_blank(&self) -> bool {
        self.as_os_str().is_empty()
    }
}

impl Blank for Secret {
    fn is_blank(&self) -> bool {
        self.0.is_empty()
    }
}

/// serde `with` module for optional strings and secrets. TOML has no null, so an unset value is written as
/// `""` and `""` reads back as unset: `config check` output then shows every key and still parses, and an
/// empty value in the file means the same as an empty environment variable.
pub(crate) mod optional {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Blank;

    pub(crate) fn serialize<S: Serializer, T: Serialize>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => v.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Blank,
    {
        let v = T::deserialize(d)?;
        Ok(if v.is_blank() { None } else { Some(v) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_prints_stars_everywhere_but_expose() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s} {:?}", Some(&s)), "*** *** Some(***)");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_echoed_in_the_error() {
        #[derive(Debug, Deserialize)]
        struct T {
            #[allow(dead_code)]
            token: Secret,
        }
        let err = toml::from_str::<T>("token = 123456789").unwrap_err();
        assert!(!err.message().contains("123456789"), "{}", err.message());
        assert!(err.message().contains("a string"), "{}", err.message());
    }
}
