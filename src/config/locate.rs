//! Where a key is in the file: dotted key paths (`route[0].subprotocol[1].upstream`) and the
//! mapping between them and line numbers, from a second, span-preserving parse of the same text
//! (`toml_edit::ImDocument`). Keeping spans here lets `validate` speak only in key paths.

use std::fmt;
use std::ops::Range;

use toml_edit::{ArrayOfTables, ImDocument, Item, Table, Value};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A dotted path to a key or array element, as an operator would point at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The document root (prints as nothing).
    pub(super) fn root() -> Self {
        Self::default()
    }

    /// This path extended by a table key.
    pub(super) fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// This path extended by an array index.
    pub(super) fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    pub(super) fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The span-preserving view of one config text.
pub(super) struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    /// Parses `text` once more, keeping spans. A text that does not parse yields a locator that
    /// knows no keys (its syntax error is reported from the first parse).
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line of a byte offset.
    pub(super) fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line of the deepest part of `path` that is written in the file: the key itself, or
    /// for a key left to its default, the table that would hold it.
    pub(super) fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::from_item(doc.as_item())?;
        let mut best: Option<usize> = None;
        for segment in &path.0 {
            let Some((span, child)) = node.child(segment) else {
                break;
            };
            if let Some(span) = span {
                best = Some(span.start);
            }
            node = child;
        }
        best.map(|offset| self.line_at(offset))
    }

    /// The key path whose key or value covers byte `offset`, deepest first; used to name the key
    /// behind a serde error, which only carries a span.
    pub(super) fn path_at(&self, offset: usize) -> Option<KeyPath> {
        let doc = self.doc.as_ref()?;
        Node::from_item(doc.as_item())?
            .find(offset, &KeyPath::root())
            .filter(|p| !p.is_root())
    }
}

/// A place in the span-preserving document that a key path can descend through.
#[derive(Clone, Copy)]
enum Node<'d> {
    Table(&'d Table),
    TableArray(&'d ArrayOfTables),
    Value(&'d Value),
}

impl<'d> Node<'d> {
    fn from_item(item: &'d Item) -> Option<Self> {
        match item {
            Item::Table(table) => Some(Node::Table(table)),
            Item::ArrayOfTables(array) => Some(Node::TableArray(array)),
            Item::Value(value) => Some(Node::Value(value)),
            Item::None => None,
        }
    }

    /// One step down: the child's span (its key for table entries, its header for `[[array]]`
    /// tables, its value for array elements) and the child itself.
    fn child(self, segment: &Segment) -> Option<(Option<Range<usize>>, Node<'d>)> {
        match (self, segment) {
            (Node::Table(table), Segment::Key(name)) => {
                let (key, item) = table.get_key_value(name)?;
                Some((key.span().or_else(|| item.span()), Node::from_item(item)?))
            }
            (Node::Value(Value::InlineTable(table)), Segment::Key(name)) => {
                let (key, item) = table.get_key_value(name)?;
                let value = item.as_value()?;
                Some((key.span().or_else(|| value.span()), Node::Value(value)))
            }
            (Node::TableArray(array), Segment::Index(index)) => {
                let table = array.get(*index)?;
                Some((table.span(), Node::Table(table)))
            }
            (Node::Value(Value::Array(array)), Segment::Index(index)) => {
                let value = array.get(*index)?;
                Some((value.span(), Node::Value(value)))
            }
            _ => None,
        }
    }

    /// The deepest key path under `path` whose key or value covers `offset`.
    fn find(self, offset: usize, path: &KeyPath) -> Option<KeyPath> {
        let covers = |span: Option<Range<usize>>| {
            span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
        };
        match self {
            Node::Table(table) => {
                for (name, _) in table.iter() {
                    let Some((key, item)) = table.get_key_value(name) else {
                        continue;
                    };
                    let here = path.key(name);
                    if covers(key.span()) {
                        return Some(here);
                    }
                    if let Some(found) = Node::from_item(item).and_then(|n| n.find(offset, &here)) {
                        return Some(found);
                    }
                }
                covers(table.span()).then(|| path.clone())
            }
            Node::TableArray(array) => array
                .iter()
                .enumerate()
                .find_map(|(i, table)| Node::Table(table).find(offset, &path.index(i))),
            Node::Value(Value::InlineTable(table)) => {
                for (name, value) in table.iter() {
                    let here = path.key(name);
                    if covers(table.key(name).and_then(|k| k.span())) {
                        return Some(here);
                    }
                    if let Some(found) = Node::Value(value).find(offset, &here) {
                        return Some(found);
                    }
                }
                covers(table.span()).then(|| path.clone())
            }
            Node::Value(Value::Array(array)) => {
                let inner = array
                    .iter()
                    .enumerate()
                    .find_map(|(i, value)| Node::Value(value).find(offset, &path.index(i)));
                inner.or_else(|| covers(array.span()).then(|| path.clone()))
            }
            Node::Value(scalar) => covers(scalar.span()).then(|| path.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[limits]\nidle_timeout = \"5m\"\n\n[upstreams.chat]\nservers = [\"a:1\", \"b:2\"]\nhealth = { interval = \"5s\" }\n\n[[route]]\npath = \"/\"\n\n[[route]]\nupgrades = [{ token = \"tcp\", upstream = \"raw\" }]\n";

    #[test]
    fn key_paths_print_dotted_with_indices() {
        let path = KeyPath::root()
            .key("route")
            .index(0)
            .key("subprotocol")
            .index(1)
            .key("upstream");
        assert_eq!(path.to_string(), "route[0].subprotocol[1].upstream");
        assert_eq!(KeyPath::root().to_string(), "");
    }

    #[test]
    fn line_of_finds_the_deepest_written_part() {
        let locator = Locator::new(TEXT);
        let root = KeyPath::root();
        let rows = [
            (root.key("limits").key("idle_timeout"), Some(2)),
            // Left to its default: the table that would hold it.
            (root.key("limits").key("drain_timeout"), Some(1)),
            (
                root.key("upstreams").key("chat").key("servers").index(1),
                Some(5),
            ),
            (
                root.key("upstreams")
                    .key("chat")
                    .key("health")
                    .key("interval"),
                Some(6),
            ),
            (root.key("route").index(1), Some(11)),
            (root.key("route").index(1).key("path"), Some(11)),
            (
                root.key("route")
                    .index(1)
                    .key("upgrades")
                    .index(0)
                    .key("upstream"),
                Some(12),
            ),
            (root.key("websocket"), None),
        ];
        for (path, line) in rows {
            assert_eq!(locator.line_of(&path), line, "{path}");
        }
    }

    #[test]
    fn path_at_names_the_key_under_an_offset() {
        let locator = Locator::new(TEXT);
        let rows = [
            ("idle_timeout", "limits.idle_timeout"),
            ("\"5m\"", "limits.idle_timeout"),
            ("\"b:2\"", "upstreams.chat.servers[1]"),
            ("\"5s\"", "upstreams.chat.health.interval"),
            ("\"raw\"", "route[1].upgrades[0].upstream"),
        ];
        for (needle, want) in rows {
            let offset = TEXT.find(needle).expect(needle);
            let got = locator.path_at(offset).map(|p| p.to_string());
            assert_eq!(got.as_deref(), Some(want), "{needle}");
        }
        assert_eq!(locator.line_at(TEXT.find("[[route]]").unwrap_or(0)), 8);
    }

    #[test]
    fn unparsable_text_knows_no_keys() {
        let locator = Locator::new("[limits\n");
        assert_eq!(locator.line_of(&KeyPath::root().key("limits")), None);
        assert_eq!(locator.path_at(1), None);
        assert_eq!(locator.line_at(100), 2);
    }
}
