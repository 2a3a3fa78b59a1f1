//! The template tree: YAML and JSON both become a [`Node`], with every
//! intrinsic function (short tag or long form) turned into an explicit
//! [`Node::Fn`] so the resolver never has to guess.

use serde_json::Number;

/// One value of a parsed template. Mappings keep their source order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
    /// An intrinsic function: its long name (`Ref`, `Condition`, `Fn::Sub`…)
    /// and its argument, still unresolved.
    Fn(String, Box<Node>),
}

/// Short-form tags CloudFormation knows, each with its long name.
const TAGS: &[(&str, &str)] = &[
    ("Ref", "Ref"),
    ("Condition", "Condition"),
    ("GetAtt", "Fn::GetAtt"),
    ("Sub", "Fn::Sub"),
    ("Join", "Fn::Join"),
    ("If", "Fn::If"),
    ("Select", "Fn::Select"),
    ("Split", "Fn::Split"),
    ("FindInMap", "Fn::FindInMap"),
    ("Equals", "Fn::Equals"),
    ("Not", "Fn::Not"),
    ("And", "Fn::And"),
    ("Or", "Fn::Or"),
    ("ImportValue", "Fn::ImportValue"),
    ("Base64", "Fn::Base64"),
    ("GetAZs", "Fn::GetAZs"),
    ("Cidr", "Fn::Cidr"),
    ("Transform", "Fn::Transform"),
    ("Length", "Fn::Length"),
    ("ToJsonString", "Fn::ToJsonString"),
    ("ForEach", "Fn::ForEach"),
];

/// A YAML tag the converter does not know (CloudFormation rejects it too).
#[derive(Debug)]
pub(crate) struct UnknownTag(pub String);

impl Node {
    /// Converts a serde_norway value, mapping short tags to [`Node::Fn`].
    pub(crate) fn from_yaml(value: serde_norway::Value) -> Result<Node, UnknownTag> {
        use serde_norway::Value as Y;
        Ok(match value {
            Y::Null => Node::Null,
            Y::Bool(b) => Node::Bool(b),
            Y::Number(n) => yaml_number(&n),
            Y::String(s) => Node::String(s),
            Y::Sequence(items) => Node::List(
                items
                    .into_iter()
                    .map(Node::from_yaml)
                    .collect::<Result<_, _>>()?,
            ),
            Y::Mapping(map) => {
                let mut entries = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let key = match k {
                        Y::String(s) => s,
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        Y::Null => "null".to_string(),
                        other => format!("{other:?}"),
                    };
                    entries.push((key, Node::from_yaml(v)?));
                }
                long_form(entries)
            }
            Y::Tagged(tagged) => {
                let tag = tagged.tag.to_string();
                let short = tag.trim_start_matches('!');
                let long = TAGS
                    .iter()
                    .find(|(s, _)| *s == short)
                    .map(|(_, l)| *l)
                    .ok_or_else(|| UnknownTag(tag.clone()))?;
                Node::Fn(long.to_string(), Box::new(Node::from_yaml(tagged.value)?))
            }
        })
    }

    /// Converts a JSON value (used when a `.json` template is not valid YAML).
    pub(crate) fn from_json(value: serde_json::Value) -> Node {
        use serde_json::Value as J;
        match value {
            J::Null => Node::Null,
            J::Bool(b) => Node::Bool(b),
            J::Number(n) => Node::Number(n),
            J::String(s) => Node::String(s),
            J::Array(items) => Node::List(items.into_iter().map(Node::from_json).collect()),
            J::Object(map) => long_form(
                map.into_iter()
                    .map(|(k, v)| (k, Node::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The plain JSON form of this node (intrinsics in their long form).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Node::Null => J::Null,
            Node::Bool(b) => J::Bool(*b),
            Node::Number(n) => J::Number(n.clone()),
            Node::String(s) => J::String(s.clone()),
            Node::List(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Node::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
            Node::Fn(name, arg) => {
                let mut m = serde_json::Map::new();
                m.insert(name.clone(), arg.to_json());
                J::Object(m)
            }
        }
    }

    /// The value under `key` when this node is a mapping.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string value, when this node is a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// The scalar as text, the way CloudFormation stringifies values
    /// (numbers and booleans as written, lists joined with commas).
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match self {
            Node::String(s) => Some(s.clone()),
            Node::Number(n) => Some(n.to_string()),
            Node::Bool(b) => Some(b.to_string()),
            Node::List(items) => items
                .iter()
                .map(Node::scalar_text)
                .collect::<Option<Vec<_>>>()
                .map(|v| v.join(",")),
            _ => None,
        }
    }

    /// The number as an unsigned integer; numeric strings count too, since
    /// parameters always arrive as strings.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Node::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            }),
            Node::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The boolean; `"true"`/`"false"` strings count too.
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Node::Bool(b) => Some(*b),
            Node::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Node::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        }
    }
}

fn yaml_number(n: &serde_norway::Number) -> Node {
    if let Some(i) = n.as_i64() {
        Node::Number(i.into())
    } else if let Some(u) = n.as_u64() {
        Node::Number(u.into())
    } else if let Some(f) = n.as_f64().and_then(Number::from_f64) {
        Node::Number(f)
    } else {
        // NaN and infinities have no JSON number: keep their text.
        Node::String(n.to_string())
    }
}

/// A one-key mapping `{Ref: x}` / `{Fn::Sub: x}` / `{Condition: name}` is the
/// long form of an intrinsic; anything else stays a mapping.
fn long_form(mut entries: Vec<(String, Node)>) -> Node {
    if entries.len() == 1 {
        let key = &entries[0].0;
        let is_fn = key == "Ref"
            || (key.starts_with("Fn::") && TAGS.iter().any(|(_, l)| l == key))
            || (key == "Condition" && matches!(entries[0].1, Node::String(_)));
        if is_fn && let Some((k, v)) = entries.pop() {
            return Node::Fn(k, Box::new(v));
        }
    }
    Node::Map(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms_give_the_same_node() {
        let short: serde_norway::Value = serde_norway::from_str("a: !Sub 'x-${B}'").unwrap();
        let long: serde_norway::Value = serde_norway::from_str("a: {'Fn::Sub': 'x-${B}'}").unwrap();
        assert_eq!(
            Node::from_yaml(short).unwrap(),
            Node::from_yaml(long).unwrap()
        );
    }

    #[test]
    fn unknown_tags_are_refused() {
        let v: serde_norway::Value = serde_norway::from_str("a: !Bogus x").unwrap();
        assert_eq!(Node::from_yaml(v).unwrap_err().0, "!Bogus");
    }

    #[test]
    fn a_condition_key_with_a_mapping_value_stays_data() {
        let v: serde_norway::Value =
            serde_norway::from_str("Condition: {StringEquals: {a: b}}").unwrap();
        assert!(matches!(Node::from_yaml(v).unwrap(), Node::Map(_)));
    }
}
