//! Bounds on what the YAML/JSON parser is given (contract K3): a size limit
//! and a nesting-depth limit checked by a linear pre-scan of the text, so a
//! hostile or broken file (200 KB of `[[[[…`, thousands of indentation
//! levels) is refused in milliseconds with its location instead of being
//! handed to a recursive parser. YAML alias bombs are refused by
//! `serde_norway` itself (its repetition limit); their error is reported
//! as a syntax error with its location.
//!
//! The scan is a small hand-written tokenizer, not a YAML parser: it only
//! needs nesting, so it tracks flow brackets outside quotes and comments,
//! block indentation (with `- ` sequence entries as a level), and skips
//! block scalars (`|`, `>`), whose text can hold any brackets.

/// Largest template (or OpenAPI / include file) read: 8 MiB, eight times
/// CloudFormation's 1 MB limit for a template in S3.
pub(crate) const MAX_TEMPLATE_BYTES: usize = 8 * 1024 * 1024;

/// Deepest nesting of mappings and lists accepted.
pub(crate) const MAX_DEPTH: usize = 100;

/// Why a text is refused before parsing, and where (1-based line and
/// column; 0 when not located).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// Checks size and nesting depth.
pub(crate) fn check(text: &str) -> Result<(), LimitError> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(LimitError {
            line: 0,
            column: 0,
            message: format!(
                "file is {} bytes, over the limit of {MAX_TEMPLATE_BYTES} bytes",
                text.len()
            ),
        });
    }
    let mut flow = 0usize;
    // Indentation of the open block levels, innermost last.
    let mut blocks: Vec<usize> = Vec::new();
    // Skip lines indented deeper than this (inside a block scalar).
    let mut scalar_parent: Option<usize> = None;
    let too_deep = |line: usize, column: usize| LimitError {
        line,
        column,
        message: format!("nesting deeper than {MAX_DEPTH} levels"),
    };
    // Quote state carries across lines inside flow collections.
    let mut quote: Option<u8> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        let rest = &bytes[indent..];
        if let Some(parent) = scalar_parent {
            if rest.is_empty() || indent > parent {
                continue;
            }
            scalar_parent = None;
        }
        if flow == 0 && quote.is_none() {
            if rest.is_empty() || rest[0] == b'#' {
                continue;
            }
            while blocks.last().is_some_and(|&open| open >= indent) {
                blocks.pop();
            }
            blocks.push(indent);
            // `- - - x`: each sequence entry opens one more level.
            let mut at = 0;
            while at + 1 < rest.len() && rest[at] == b'-' && rest[at + 1] == b' ' {
                blocks.push(indent + at + 2);
                at += 2;
                while at < rest.len() && rest[at] == b' ' {
                    at += 1;
                }
            }
            if blocks.len() > MAX_DEPTH {
                return Err(too_deep(line_no, indent + 1));
            }
        }
        let mut prev = b' ';
        for (col, &b) in bytes.iter().enumerate() {
            match quote {
                Some(q) => {
                    if b == q {
                        quote = None;
                    }
                }
                None => match b {
                    b'"' | b'\'' if matches!(prev, b' ' | b'[' | b'{' | b',' | b':' | b'\t') => {
                        quote = Some(b);
                    }
                    b'#' if matches!(prev, b' ' | b'\t') || col == 0 => break,
                    b'[' | b'{' => {
                        flow += 1;
                        if flow + blocks.len() > MAX_DEPTH {
                            return Err(too_deep(line_no, col + 1));
                        }
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = b;
        }
        // In block context a quote left open at the end of a line is a
        // multi-line scalar or a syntax error; either way it opens nothing.
        if flow == 0 {
            quote = None;
        }
        if flow == 0 && quote.is_none() && block_scalar_header(line) {
            scalar_parent = Some(indent);
        }
    }
    Ok(())
}

/// `key: |`, `key: >-`, `- |2` …: the following more-indented lines are
/// text.
fn block_scalar_header(line: &str) -> bool {
    let code = match line.find(" #") {
        Some(at) => &line[..at],
        None => line,
    };
    let code = code.trim_end();
    let start = code.rfind([' ', ':']).map_or(0, |at| at + 1);
    let last = &code[start..];
    let mut chars = last.chars();
    matches!(chars.next(), Some('|' | '>')) && chars.all(|c| matches!(c, '+' | '-' | '0'..='9'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k3_deep_brackets_are_refused_with_their_place() {
        let text = format!("Resources: {}", "[".repeat(200_000));
        let started = std::time::Instant::now();
        let err = check(&text).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!((err.line, err.column), (1, 12 + MAX_DEPTH - 1));
        assert_eq!(err.message, "nesting deeper than 100 levels");
        let text = format!("{{\"a\": {}1{}}}", "{\"b\": ".repeat(150), "}".repeat(150));
        assert!(check(&text).is_err());
    }

    #[test]
    fn k3_deep_indentation_is_refused() {
        let mut text = String::new();
        for i in 0..150 {
            text.push_str(&" ".repeat(i));
            text.push_str("k:\n");
        }
        let err = check(&text).unwrap_err();
        assert_eq!(err.line, MAX_DEPTH + 1);
        let seq: String = (0..150).map(|_| "- ").collect::<String>() + "x\n";
        assert!(check(&seq).is_err());
    }

    #[test]
    fn k3_oversized_file_is_refused() {
        let text = "#".repeat(MAX_TEMPLATE_BYTES + 1);
        let err = check(&text).unwrap_err();
        assert!(err.message.contains("over the limit"));
    }

    #[test]
    fn ordinary_templates_pass() {
        let text = r#"
Resources:
  F:
    Type: AWS::Serverless::Function
    Properties:
      InlineCode: |
        def h(e, c):
            return [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
      Handler: "index.h # not a comment ["
      Environment: {Variables: {A: '[', B: "{"}}   # [[[[
      Events:
        - - - [a, {b: c}]
"#;
        check(text).unwrap();
        let deep_but_fine = format!("{}1{}", "[".repeat(90), "]".repeat(90));
        check(&deep_but_fine).unwrap();
    }
}
