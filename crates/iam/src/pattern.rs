//! IAM wildcard patterns: `*` matches any run of characters (`:` and `/`
//! included, as in a `Resource` ARN), `?` exactly one. Compiled once when
//! a policy is loaded; matching is a linear scan with one backtrack point
//! per `*` (no allocation).

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The pattern text (lower-cased when case-insensitive).
    text: String,
    /// `*` alone: matches everything without a scan.
    any: bool,
    /// Compare ASCII case-insensitively (action names).
    ignore_case: bool,
}

impl Pattern {
    /// A case-sensitive pattern (resources: ARNs are case-sensitive).
    pub fn new(text: &str) -> Self {
        Self {
            any: text == "*",
            text: text.to_string(),
            ignore_case: false,
        }
    }

    /// A case-insensitive pattern (actions: `dynamodb:getitem` is
    /// `dynamodb:GetItem`).
    pub fn new_ignore_case(text: &str) -> Self {
        Self {
            any: text == "*",
            text: text.to_ascii_lowercase(),
            ignore_case: true,
        }
    }

    /// The pattern as written (lower case for case-insensitive ones).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `value` matches. A case-insensitive pattern expects
    /// `value` in any case.
    pub fn matches(&self, value: &str) -> bool {
        if self.any {
            return true;
        }
        glob(self.text.as_bytes(), value.as_bytes(), self.ignore_case)
    }
}

fn glob(pattern: &[u8], value: &[u8], ignore_case: bool) -> bool {
    let eq = |p: u8, v: u8| {
        if ignore_case {
            p == v.to_ascii_lowercase()
        } else {
            p == v
        }
    };
    let (mut p, mut v) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, value index).
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, v));
                p += 1;
            }
            Some(b'?') => {
                p += 1;
                v += 1;
            }
            Some(&c) if eq(c, value[v]) => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    p = sp;
                    v = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_question_marks() {
        let p = Pattern::new("arn:aws:s3:::bucket/*");
        assert!(p.matches("arn:aws:s3:::bucket/a/b.txt"));
        assert!(p.matches("arn:aws:s3:::bucket/"));
        assert!(!p.matches("arn:aws:s3:::bucket"));
        assert!(!p.matches("arn:aws:s3:::bucket2/a"));
        let p = Pattern::new("arn:aws:lambda:*:*:function:orders*");
        assert!(p.matches("arn:aws:lambda:us-east-1:123456789012:function:orders"));
        assert!(p.matches("arn:aws:lambda:us-east-1:123456789012:function:orders:live"));
        assert!(!p.matches("arn:aws:lambda:us-east-1:123456789012:function:other"));
        let p = Pattern::new("a?c");
        assert!(p.matches("abc"));
        assert!(!p.matches("ac"));
        assert!(!p.matches("abbc"));
        assert!(Pattern::new("*").matches(""));
        assert!(Pattern::new("a*b*c").matches("aXXbYYbc"));
        assert!(!Pattern::new("a*b*c").matches("aXXbYY"));
        assert!(Pattern::new("").matches(""));
        assert!(!Pattern::new("").matches("x"));
    }

    #[test]
    fn resources_are_case_sensitive_actions_are_not() {
        assert!(!Pattern::new("arn:aws:s3:::Bucket").matches("arn:aws:s3:::bucket"));
        let a = Pattern::new_ignore_case("DynamoDB:Get*");
        assert!(a.matches("dynamodb:GetItem"));
        assert!(a.matches("DYNAMODB:GETITEM"));
        assert!(!a.matches("dynamodb:PutItem"));
    }

    #[test]
    fn long_inputs_do_not_blow_up() {
        let p = Pattern::new("*a*a*a*a*a*b");
        let v = "a".repeat(10_000);
        assert!(!p.matches(&v));
    }
}
