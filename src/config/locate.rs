//! Finds the line of a key path (`routes[2].upstream`) in the YAML text.
//!
//! serde_yaml reports lines for syntax and type errors, but semantic errors found after parsing
//! (an unknown upstream name, say) have only a key path. Operators want the line too, so this
//! walks the block-style indentation of the source. Flow-style values (`{a: b}`) are not
//! descended into; the nearest enclosing key's line is reported instead.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Renders a key path the way errors print it: `routes[2].subscribe.path`.
pub fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[derive(Debug)]
enum Kind {
    Dash,
    Key(String),
    Other,
}

#[derive(Debug)]
struct Entry {
    line: usize,
    col: usize,
    kind: Kind,
}

fn entries(src: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, raw) in src.lines().enumerate() {
        let line = i + 1;
        let mut col = raw.len() - raw.trim_start().len();
        let mut rest = raw.trim_start();
        if rest.is_empty() || rest.starts_with('#') || rest == "---" {
            continue;
        }
        while rest == "-" || rest.starts_with("- ") {
            out.push(Entry {
                line,
                col,
                kind: Kind::Dash,
            });
            let after = rest[1..].trim_start();
            col += rest.len() - after.len();
            rest = after;
        }
        if rest.is_empty() {
            continue;
        }
        let kind = match key_of(rest) {
            Some(k) => Kind::Key(k),
            None => Kind::Other,
        };
        out.push(Entry { line, col, kind });
    }
    out
}

fn key_of(text: &str) -> Option<String> {
    let (key, _) = if let Some(stripped) = text.strip_prefix('"') {
        let end = stripped.find('"')?;
        let rest = &stripped[end + 1..];
        if !rest.starts_with(':') {
            return None;
        }
        return Some(stripped[..end].to_string());
    } else {
        let idx = text.find(':')?;
        let after = &text[idx + 1..];
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        (&text[..idx], after)
    };
    Some(key.trim().to_string())
}

/// Returns the 1-based line of `path` in `src`, or of its nearest ancestor that could be found.
pub fn line_of(src: &str, path: &[Seg]) -> Option<usize> {
    let es = entries(src);
    let mut scope = 0..es.len();
    let mut best = None;
    for seg in path {
        if scope.is_empty() {
            break;
        }
        let first = &es[scope.start];
        match seg {
            Seg::Key(k) => {
                let col = first.col;
                let found = scope.clone().find(|&i| {
                    es[i].col == col && matches!(&es[i].kind, Kind::Key(name) if name == k)
                });
                let Some(i) = found else { break };
                best = Some(es[i].line);
                let mut end = i + 1;
                while end < scope.end
                    && (es[end].col > col
                        || (es[end].col == col && matches!(es[end].kind, Kind::Dash)))
                {
                    end += 1;
                }
                scope = i + 1..end;
            }
            Seg::Index(n) => {
                let Some(col) = scope
                    .clone()
                    .find(|&i| matches!(es[i].kind, Kind::Dash))
                    .map(|i| es[i].col)
                else {
                    break;
                };
                let found = scope
                    .clone()
                    .filter(|&i| es[i].col == col && matches!(es[i].kind, Kind::Dash))
                    .nth(*n);
                let Some(i) = found else { break };
                best = Some(es[i].line);
                let mut end = i + 1;
                while end < scope.end && es[end].col > col {
                    end += 1;
                }
                scope = i + 1..end;
            }
        }
    }
    best
}

/// The line of the second top-level `key:` of `src`: serde_yaml reports a duplicate top-level key
/// without a place.
pub fn second_top_level(src: &str, key: &str) -> Option<usize> {
    entries(src)
        .iter()
        .filter(|e| e.col == 0 && matches!(&e.kind, Kind::Key(k) if k == key))
        .nth(1)
        .map(|e| e.line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"listen: "127.0.0.1:8080"
upstreams:
  backend:
    address: "127.0.0.1:9000"
routes:
  # the API
  - name: api
    prefix: "/api/"
    upstream: backend
  - name: prices
    path: "/p/{topic}"
    upstream: bakend
    subscribe:
      path: "/ws"
      headers: {A: b}
"#;

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn finds_nested_keys() {
        assert_eq!(line_of(SRC, &[k("listen")]), Some(1));
        assert_eq!(
            line_of(SRC, &[k("upstreams"), k("backend"), k("address")]),
            Some(4)
        );
        assert_eq!(line_of(SRC, &[k("routes"), Seg::Index(0)]), Some(7));
        assert_eq!(
            line_of(SRC, &[k("routes"), Seg::Index(1), k("upstream")]),
            Some(12)
        );
        assert_eq!(
            line_of(SRC, &[k("routes"), Seg::Index(1), k("name")]),
            Some(10)
        );
        assert_eq!(
            line_of(
                SRC,
                &[k("routes"), Seg::Index(1), k("subscribe"), k("path")]
            ),
            Some(14)
        );
    }

    #[test]
    fn falls_back_to_nearest_ancestor() {
        assert_eq!(
            line_of(SRC, &[k("routes"), Seg::Index(1), k("mode")]),
            Some(10)
        );
        assert_eq!(line_of(SRC, &[k("nope")]), None);
        assert_eq!(
            render(&[k("routes"), Seg::Index(2), k("upstream")]),
            "routes[2].upstream"
        );
    }
}
