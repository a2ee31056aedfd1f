//! Checks the shape of the YAML (keys and value types) against the config's JSON Schema.
//!
//! serde stops at the first error, so a file with three mistakes would take three `-t` runs to
//! fix. This walks the parsed YAML against the schema `file.rs` derives (so a key added there is
//! known here without a second list), notes every unknown key and every value of the wrong type
//! with its path, and removes them, so that the typed parse of what is left can still run and the
//! semantic checks after it can report the rest in the same run.

use super::duration::ConfDuration;
use super::locate::Seg;
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use serde_yaml::Value as Yaml;

/// One shape problem. `path` is what the message is printed under; `at` is the path whose line
/// is reported (for an unknown key, the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: Vec<Seg>,
    pub at: Vec<Seg>,
    pub message: String,
}

/// What a walk found and did.
#[derive(Debug, Default)]
pub struct Shape {
    pub found: Vec<Found>,
    /// Known keys whose bad value was removed: the semantic checks, which then see the default,
    /// may report consequences of that, which the caller drops.
    pub removed: Vec<Vec<Seg>>,
    /// What is left cannot be typed (a required value is missing or bad, or a list item is),
    /// so the semantic checks cannot run.
    pub blocked: bool,
}

/// Walks `value` against `schema` (the JSON Schema of the whole file), repairing it in place.
pub fn check(schema: &Json, value: &mut Yaml) -> Shape {
    let empty = Map::new();
    let defs = schema
        .get("$defs")
        .and_then(Json::as_object)
        .unwrap_or(&empty);
    let mut w = Walker {
        defs,
        shape: Shape::default(),
    };
    if !w.walk(schema, value, &mut Vec::new(), true) {
        w.shape.blocked = true;
    }
    w.shape
}

struct Walker<'a> {
    defs: &'a Map<String, Json>,
    shape: Shape,
}

impl Walker<'_> {
    fn report(&mut self, path: &[Seg], message: String) {
        self.shape.found.push(Found {
            path: path.to_vec(),
            at: path.to_vec(),
            message,
        });
    }

    /// Returns false when `v` is wrong and was reported: the caller removes it.
    /// `coerce`: serde_yaml reads a plain number or bool as the text of a string field, except
    /// inside an untagged enum, which sees the number itself.
    fn walk(&mut self, schema: &Json, v: &mut Yaml, path: &mut Vec<Seg>, coerce: bool) -> bool {
        // serde_yaml ignores a tag on a value it reads into a plain field.
        if let Yaml::Tagged(t) = v {
            let inner = std::mem::take(&mut t.value);
            *v = inner;
        }
        if is_duration(schema) {
            return match ConfDuration::deserialize(v.clone()) {
                Ok(_) => true,
                Err(e) => {
                    self.report(path, e.to_string());
                    false
                }
            };
        }
        let schema = resolve(self.defs, schema);
        if let Some(alts) = schema.get("anyOf").and_then(Json::as_array) {
            return self.any_of(alts, v, path, coerce);
        }
        let types = types_of(schema);
        if types.is_empty() {
            return true;
        }
        if v.is_null() && types.contains(&"null") {
            return true;
        }
        let want = types
            .iter()
            .copied()
            .find(|t| *t != "null")
            .unwrap_or("null");
        let fits = match (want, &*v) {
            ("object", Yaml::Mapping(_)) => return self.object(schema, v, path),
            ("array", Yaml::Sequence(_)) => return self.array(schema, v, path),
            ("string", Yaml::String(_)) => true,
            ("string", Yaml::Number(_) | Yaml::Bool(_)) if coerce => {
                *v = Yaml::String(scalar_text(v));
                true
            }
            ("integer", Yaml::Number(n)) => {
                if let Some(msg) = integer_problem(schema, n) {
                    self.report(path, msg);
                    return false;
                }
                true
            }
            ("number", Yaml::Number(_)) | ("boolean", Yaml::Bool(_)) | ("null", Yaml::Null) => true,
            _ => false,
        };
        if !fits {
            let msg = format!("expected {}, found {}", self.expected(schema), found(v));
            self.report(path, msg);
        }
        fits
    }

    fn any_of(&mut self, alts: &[Json], v: &mut Yaml, path: &mut Vec<Seg>, coerce: bool) -> bool {
        let (nulls, others): (Vec<&Json>, Vec<&Json>) =
            alts.iter().partition(|a| types_of(a) == ["null"]);
        if !nulls.is_empty() && v.is_null() {
            return true;
        }
        // `Option<T>`: just T.
        if let [only] = others.as_slice() {
            return self.walk(only, v, path, coerce);
        }
        // An untagged enum: the first alternative that takes the value as it is wins...
        for alt in &others {
            let mut trial = Walker {
                defs: self.defs,
                shape: Shape::default(),
            };
            let mut copy = v.clone();
            if trial.walk(alt, &mut copy, &mut path.clone(), false)
                && trial.shape.found.is_empty()
                && !trial.shape.blocked
            {
                return true;
            }
        }
        // ...else the one of the value's kind says what is wrong inside it.
        let kind = kind_of(v);
        let same: Vec<&&Json> = others
            .iter()
            .filter(|a| self.kind_of_schema(a) == Some(kind))
            .collect();
        if let [alt] = same.as_slice() {
            return self.walk(alt, v, path, false);
        }
        let expected: Vec<String> = others.iter().map(|a| self.expected(a)).collect();
        let msg = format!("expected {}, found {}", expected.join(" or "), found(v));
        self.report(path, msg);
        false
    }

    fn object(&mut self, schema: &Json, v: &mut Yaml, path: &mut Vec<Seg>) -> bool {
        let Yaml::Mapping(map) = v else {
            return false;
        };
        let props = schema.get("properties").and_then(Json::as_object);
        let extra = schema.get("additionalProperties");
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Json::as_array)
            .map(|r| r.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let keys: Vec<Yaml> = map.keys().cloned().collect();
        let mut present = Vec::new();
        for k in keys {
            let name = match &k {
                Yaml::String(s) => s.clone(),
                other => scalar_text(other),
            };
            present.push(name.clone());
            path.push(Seg::Key(name.clone()));
            let known = props.and_then(|p| p.get(&name));
            let keep = match (known, extra) {
                (Some(sub), _) => {
                    let ok = self.walk(sub, map.get_mut(&k).expect("listed key"), path, true);
                    if !ok {
                        self.shape.removed.push(path.clone());
                        if required.contains(&name.as_str()) {
                            self.shape.blocked = true;
                        }
                    }
                    ok
                }
                (None, Some(sub)) if sub.is_object() => {
                    let ok = self.walk(sub, map.get_mut(&k).expect("listed key"), path, true);
                    if !ok {
                        self.shape.removed.push(path.clone());
                    }
                    ok
                }
                (None, Some(Json::Bool(false))) => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let (message, meant) = unknown_field(&name, &known);
                    let parent = path[..path.len() - 1].to_vec();
                    if let Some(meant) = meant {
                        // The key the typo stood for is as good as removed: its absence may
                        // set off semantic checks that only repeat this problem.
                        let mut p = parent.clone();
                        p.push(Seg::Key(meant.to_string()));
                        self.shape.removed.push(p);
                    }
                    self.shape.found.push(Found {
                        path: parent,
                        at: path.clone(),
                        message,
                    });
                    false
                }
                _ => true,
            };
            path.pop();
            if !keep {
                map.remove(&k);
            }
        }
        for r in required {
            if !present.iter().any(|p| p == r) {
                self.report(path, format!("missing field `{r}`"));
                self.shape.blocked = true;
            }
        }
        true
    }

    fn array(&mut self, schema: &Json, v: &mut Yaml, path: &mut Vec<Seg>) -> bool {
        let Yaml::Sequence(items) = v else {
            return false;
        };
        let Some(item) = schema.get("items") else {
            return true;
        };
        for (i, it) in items.iter_mut().enumerate() {
            path.push(Seg::Index(i));
            // Removing an item would renumber the ones after it, and the semantic checks would
            // then name the wrong `routes[N]`: so the whole file is left untyped instead.
            if !self.walk(item, it, path, true) {
                self.shape.blocked = true;
            }
            path.pop();
        }
        true
    }

    /// "a map", "a list of strings", "a duration such as ...", for messages.
    fn expected(&self, schema: &Json) -> String {
        if is_duration(schema) {
            return "a duration such as 250ms, 25s, 5m or a number of seconds".into();
        }
        let schema = resolve(self.defs, schema);
        if let Some(alts) = schema.get("anyOf").and_then(Json::as_array) {
            let parts: Vec<String> = alts
                .iter()
                .filter(|a| types_of(a) != ["null"])
                .map(|a| self.expected(a))
                .collect();
            return parts.join(" or ");
        }
        let want = types_of(schema)
            .into_iter()
            .find(|t| *t != "null")
            .unwrap_or("null");
        match want {
            "object" => "a map".into(),
            "array" => match schema.get("items") {
                Some(item) if types_of(resolve(self.defs, item)) == ["string"] => {
                    "a list of strings".into()
                }
                _ => "a list".into(),
            },
            "string" => "a string".into(),
            "integer" => {
                if schema.get("minimum").and_then(Json::as_f64) == Some(0.0) {
                    "a whole number (0 or more)".into()
                } else {
                    "a whole number".into()
                }
            }
            "number" => "a number".into(),
            "boolean" => "`true` or `false`".into(),
            _ => "nothing".into(),
        }
    }

    fn kind_of_schema(&self, schema: &Json) -> Option<&'static str> {
        if is_duration(schema) {
            return None;
        }
        let schema = resolve(self.defs, schema);
        match types_of(schema).into_iter().find(|t| *t != "null")? {
            "object" => Some("map"),
            "array" => Some("list"),
            "string" => Some("string"),
            "integer" | "number" => Some("number"),
            "boolean" => Some("bool"),
            _ => None,
        }
    }
}

fn resolve<'s>(defs: &'s Map<String, Json>, schema: &'s Json) -> &'s Json {
    let mut s = schema;
    // Bounded: the schema is generated from our own types and has no cycle of bare refs.
    for _ in 0..8 {
        match ref_name(s).and_then(|n| defs.get(n)) {
            Some(d) if !is_duration(s) => s = d,
            _ => break,
        }
    }
    s
}

fn ref_name(schema: &Json) -> Option<&str> {
    schema.get("$ref")?.as_str()?.strip_prefix("#/$defs/")
}

/// Durations are checked by the very code that parses them, so the message is the same.
fn is_duration(schema: &Json) -> bool {
    ref_name(schema) == Some("Duration")
}

fn types_of(schema: &Json) -> Vec<&str> {
    match schema.get("type") {
        Some(Json::String(t)) => vec![t.as_str()],
        Some(Json::Array(ts)) => ts.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    }
}

fn kind_of(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "bool",
        Yaml::Number(_) => "number",
        Yaml::String(_) => "string",
        Yaml::Sequence(_) => "list",
        Yaml::Mapping(_) => "map",
        Yaml::Tagged(t) => kind_of(&t.value),
    }
}

fn scalar_text(v: &Yaml) -> String {
    match v {
        Yaml::Null => "null".into(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => s.clone(),
        Yaml::Tagged(t) => scalar_text(&t.value),
        Yaml::Sequence(_) | Yaml::Mapping(_) => String::new(),
    }
}

/// What was found, for "expected X, found Y".
fn found(v: &Yaml) -> String {
    match v {
        Yaml::Null => "nothing".into(),
        Yaml::Bool(_) | Yaml::Number(_) => format!("`{}`", scalar_text(v)),
        Yaml::String(s) => format!("the string {s:?}"),
        Yaml::Sequence(_) => "a list".into(),
        Yaml::Mapping(_) => "a map".into(),
        Yaml::Tagged(t) => found(&t.value),
    }
}

fn integer_problem(schema: &Json, n: &serde_yaml::Number) -> Option<String> {
    let expected = if schema.get("minimum").and_then(Json::as_f64) == Some(0.0) {
        "a whole number (0 or more)"
    } else {
        "a whole number"
    };
    let value = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u as f64,
        (None, Some(i)) => i as f64,
        _ => return Some(format!("expected {expected}, found `{n}`")),
    };
    let min = schema.get("minimum").and_then(Json::as_f64);
    let max = schema.get("maximum").and_then(Json::as_f64);
    if min.is_some_and(|m| value < m) || max.is_some_and(|m| value > m) {
        return Some(format!("expected {expected}, found `{n}`"));
    }
    None
}

/// `unknown field `long_pol`, did you mean `long_poll`?`: the nearest known key when it is close
/// enough to be a typo of it; a short list when there are only a few keys to choose from.
fn unknown_field<'k>(name: &str, known: &[&'k str]) -> (String, Option<&'k str>) {
    // One edit per three characters typed, at least one and at most three.
    let limit = (name.chars().count() / 3).clamp(1, 3);
    let nearest = known
        .iter()
        .map(|k| {
            let d = strsim::osa_distance(&name.to_lowercase(), &k.to_lowercase());
            (d, *k)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d);
    match nearest {
        Some((_, k)) => (
            format!("unknown field `{name}`, did you mean `{k}`?"),
            Some(k),
        ),
        None if (1..=3).contains(&known.len()) => {
            let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            let msg = format!("unknown field `{name}` (expected {})", list.join(" or "));
            (msg, None)
        }
        None => (format!("unknown field `{name}`"), None),
    }
}

#[cfg(test)]
mod tests {
    fn unknown_field(name: &str, known: &[&str]) -> String {
        super::unknown_field(name, known).0
    }

    #[test]
    fn suggests_only_a_near_key() {
        let keys = ["long_poll", "max_wait", "mode", "prefix", "path"];
        assert_eq!(
            unknown_field("long_pol", &keys),
            "unknown field `long_pol`, did you mean `long_poll`?"
        );
        assert_eq!(
            unknown_field("prefx", &keys),
            "unknown field `prefx`, did you mean `prefix`?"
        );
        assert_eq!(
            unknown_field("Mode", &keys),
            "unknown field `Mode`, did you mean `mode`?"
        );
        // Nothing close: no guess, and no list of every key either.
        assert_eq!(
            unknown_field("listen_typo", &keys),
            "unknown field `listen_typo`"
        );
        assert_eq!(unknown_field("xyz", &keys), "unknown field `xyz`");
        assert_eq!(
            unknown_field("minimum", &["max", "min"]),
            "unknown field `minimum` (expected `max` or `min`)"
        );
    }
}
