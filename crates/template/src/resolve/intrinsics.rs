//! The intrinsic functions, `AWS::Include`, and CDK asset metadata.

use super::*;

impl<'a> Resolver<'a, '_> {
    // ---- intrinsic functions -------------------------------------------

    /// Resolves a node; `None` means `AWS::NoValue` (remove the property).
    pub(crate) fn resolve(&mut self, node: &Node, path: &str) -> Option<Node> {
        match node {
            Node::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    if let Some(r) = self.resolve(v, &format!("{path}.{k}")) {
                        out.push((k.clone(), r));
                    }
                }
                Some(Node::Map(out))
            }
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    if let Some(r) = self.resolve(v, &format!("{path}.{i}")) {
                        out.push(r);
                    }
                }
                Some(Node::List(out))
            }
            Node::Fn(name, arg) => self.intrinsic(name, arg, path),
            other => Some(other.clone()),
        }
    }

    pub(super) fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        self.resolve(node, path).and_then(|n| n.scalar_text())
    }

    pub(super) fn bad_args(&mut self, f: &str, path: &str, expected: &str) -> Option<Node> {
        self.ctx.warn(
            DiagnosticKind::InvalidValue,
            path,
            format!("{f} expects {expected}; left unresolved"),
        );
        Some(Node::String(String::new()))
    }

    pub(super) fn intrinsic(&mut self, f: &str, arg: &Node, path: &str) -> Option<Node> {
        match f {
            "Ref" => {
                let Some(target) = self.text(arg, path) else {
                    return self.bad_args("Ref", path, "a name");
                };
                match self.try_ref(&target) {
                    Ok(v) => v,
                    Err(miss) => {
                        let msg = self.miss_message("!Ref", &target, miss);
                        self.ctx
                            .warn(DiagnosticKind::UnresolvedReference, path, msg);
                        Some(Node::String(target))
                    }
                }
            }
            "Fn::GetAtt" => {
                let (id, attr) = match arg {
                    Node::String(s) => match s.split_once('.') {
                        Some((a, b)) => (a.to_string(), b.to_string()),
                        None => return self.bad_args("!GetAtt", path, "Resource.Attribute"),
                    },
                    Node::List(items) if items.len() == 2 => {
                        match (self.text(&items[0], path), self.text(&items[1], path)) {
                            (Some(a), Some(b)) => (a, b),
                            _ => return self.bad_args("!GetAtt", path, "[Resource, Attribute]"),
                        }
                    }
                    _ => return self.bad_args("!GetAtt", path, "Resource.Attribute"),
                };
                match self.get_att(&id, &attr) {
                    Ok(v) => Some(Node::String(v)),
                    Err(miss) => {
                        let msg = self.miss_message("!GetAtt", &format!("{id}.{attr}"), miss);
                        self.ctx
                            .warn(DiagnosticKind::UnresolvedReference, path, msg);
                        Some(Node::String(format!("{id}.{attr}")))
                    }
                }
            }
            "Fn::Sub" => self.sub(arg, path),
            "Fn::Join" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!Join", path, "[delimiter, [values]]");
                };
                if items.len() != 2 {
                    return self.bad_args("!Join", path, "[delimiter, [values]]");
                }
                let delim = self.text(&items[0], path).unwrap_or_default();
                let parts = match self.resolve(&items[1], path) {
                    Some(Node::List(v)) => v,
                    Some(other) => vec![other],
                    None => Vec::new(),
                };
                let parts: Vec<String> = parts
                    .iter()
                    .map(|p| p.scalar_text().unwrap_or_default())
                    .collect();
                Some(Node::String(parts.join(&delim)))
            }
            "Fn::Select" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!Select", path, "[index, list]");
                };
                if items.len() != 2 {
                    return self.bad_args("!Select", path, "[index, list]");
                }
                let idx = self.resolve(&items[0], path).and_then(|n| n.as_u64());
                let list = match self.resolve(&items[1], path) {
                    Some(Node::List(v)) => v,
                    // Selecting from a value kept as data (`!GetAZs`,
                    // `!Cidr`) keeps the selection as data too.
                    Some(data @ Node::Map(_)) => {
                        let idx = self.resolve(&items[0], path).unwrap_or(Node::Null);
                        return Some(Node::Map(vec![(
                            f.to_string(),
                            Node::List(vec![idx, data]),
                        )]));
                    }
                    Some(Node::String(s)) => {
                        s.split(',').map(|p| Node::String(p.to_string())).collect()
                    }
                    _ => Vec::new(),
                };
                match idx.and_then(|i| list.get(i as usize)) {
                    Some(v) => Some(v.clone()),
                    None => self.bad_args("!Select", path, "an index inside the list"),
                }
            }
            "Fn::Split" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!Split", path, "[delimiter, string]");
                };
                if items.len() != 2 {
                    return self.bad_args("!Split", path, "[delimiter, string]");
                }
                let delim = self.text(&items[0], path).unwrap_or_default();
                let s = self.text(&items[1], path).unwrap_or_default();
                if delim.is_empty() {
                    return Some(Node::List(vec![Node::String(s)]));
                }
                Some(Node::List(
                    s.split(delim.as_str())
                        .map(|p| Node::String(p.to_string()))
                        .collect(),
                ))
            }
            "Fn::If" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!If", path, "[condition, then, else]");
                };
                if items.len() != 3 {
                    return self.bad_args("!If", path, "[condition, then, else]");
                }
                let Some(cond) = self.text(&items[0], path) else {
                    return self.bad_args("!If", path, "a condition name");
                };
                let branch = if self.condition(&cond, path) {
                    &items[1]
                } else {
                    &items[2]
                };
                self.resolve(branch, path)
            }
            "Fn::FindInMap" => {
                let Node::List(items) = arg else {
                    return self.bad_args("!FindInMap", path, "[map, key, key]");
                };
                if items.len() < 3 {
                    return self.bad_args("!FindInMap", path, "[map, key, key]");
                }
                let keys: Vec<String> = items[..3]
                    .iter()
                    .map(|k| self.text(k, path).unwrap_or_default())
                    .collect();
                let t = self.t;
                let found = t
                    .mappings
                    .get(&keys[0])
                    .and_then(|m| m.get(&keys[1]))
                    .and_then(|m| m.get(&keys[2]));
                match found {
                    Some(v) => self.resolve(v, path),
                    None => {
                        if let Some(default) = items.get(3).and_then(|d| d.get("DefaultValue")) {
                            return self.resolve(default, path);
                        }
                        self.ctx.warn(
                            DiagnosticKind::UnresolvedReference,
                            path,
                            format!(
                                "!FindInMap: mapping {} has no entry {}.{}",
                                keys[0], keys[1], keys[2]
                            ),
                        );
                        Some(Node::String(String::new()))
                    }
                }
            }
            "Fn::Equals" | "Fn::And" | "Fn::Or" | "Fn::Not" | "Condition" => {
                let node = Node::Fn(f.to_string(), Box::new(arg.clone()));
                Some(Node::Bool(self.cond_expr(&node, path)))
            }
            "Fn::ImportValue" => {
                let name = self.text(arg, path).unwrap_or_default();
                self.ctx.warn(
                    DiagnosticKind::UnresolvedReference,
                    path,
                    format!("!ImportValue {name} cannot be resolved offline"),
                );
                Some(Node::String(name))
            }
            "Fn::Transform" if arg.get("Name").and_then(Node::as_str) == Some("AWS::Include") => {
                self.include(arg, path)
            }
            _ => {
                // Base64, GetAZs, Cidr, Transform… are kept as data with
                // their arguments resolved.
                let inner = self.resolve(arg, path).unwrap_or(Node::Null);
                Some(Node::Map(vec![(f.to_string(), inner)]))
            }
        }
    }

    pub(super) fn sub(&mut self, arg: &Node, path: &str) -> Option<Node> {
        let (template, vars) = match arg {
            Node::String(s) => (s.clone(), Vec::new()),
            Node::List(items) if items.len() == 2 => {
                let Some(tpl) = self.text(&items[0], path) else {
                    return self.bad_args("!Sub", path, "a string");
                };
                let mut vars = Vec::new();
                if let Node::Map(entries) = &items[1] {
                    for (k, v) in entries {
                        let text = self.text(v, path).unwrap_or_default();
                        vars.push((k.clone(), text));
                    }
                }
                (tpl, vars)
            }
            _ => return self.bad_args("!Sub", path, "a string or [string, {variables}]"),
        };
        let mut out = String::new();
        let mut rest = template.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let var = &after[..end];
            rest = &after[end + 1..];
            if let Some(literal) = var.strip_prefix('!') {
                // `${!Literal}` renders as `${Literal}`.
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
                continue;
            }
            let name = var.trim();
            if name.starts_with("stageVariables.") {
                // Resolved by API Gateway per request, not by CloudFormation.
                out.push_str("${");
                out.push_str(var);
                out.push('}');
                continue;
            }
            if let Some((_, v)) = vars.iter().find(|(k, _)| k == name) {
                out.push_str(v);
                continue;
            }
            let looked = if !name.starts_with("AWS::") && name.contains('.') {
                let (id, attr) = name.split_once('.').unwrap_or((name, ""));
                self.get_att(id, attr)
                    .map(Some)
                    .map(|o| o.map(Node::String))
            } else {
                self.try_ref(name)
            };
            match looked {
                Ok(Some(v)) => out.push_str(&v.scalar_text().unwrap_or_default()),
                Ok(None) => {}
                Err(miss) => {
                    let msg = self.miss_message(&format!("!Sub variable ${{{name}}}"), name, miss);
                    self.ctx
                        .warn(DiagnosticKind::UnresolvedReference, path, msg);
                    out.push_str("${");
                    out.push_str(var);
                    out.push('}');
                }
            }
        }
        out.push_str(rest);
        Some(Node::String(out))
    }

    /// `Fn::Transform: {Name: AWS::Include, Parameters: {Location}}` with a
    /// local location: the snippet, read relative to the template and
    /// resolved like inline text. Remote locations and nested includes are
    /// warnings (the value becomes null).
    pub(super) fn include(&mut self, arg: &Node, path: &str) -> Option<Node> {
        let location = arg
            .get("Parameters")
            .and_then(|p| p.get("Location"))
            .and_then(|l| self.text(l, path))
            .unwrap_or_default();
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("s3://")
            || lower.starts_with("https://")
            || lower.starts_with("http://")
        {
            self.ctx.warn(
                DiagnosticKind::RemoteCode,
                path,
                format!("AWS::Include location {location} is remote; ESB cannot fetch it offline"),
            );
            return Some(Node::Null);
        }
        if self.includes > 0 {
            self.ctx.warn(
                DiagnosticKind::InvalidValue,
                path,
                "an AWS::Include snippet must not include another; ignored",
            );
            return Some(Node::Null);
        }
        let file = crate::build::abs_path(&self.base_dir, location.trim_start_matches("file://"));
        match crate::parse::read_node(&file) {
            Ok(node) => {
                self.includes += 1;
                let out = self.resolve(&node, path);
                self.includes -= 1;
                out
            }
            Err(e) => {
                self.ctx.warn(
                    DiagnosticKind::Io,
                    path,
                    format!("cannot read AWS::Include location {}: {e}", file.display()),
                );
                Some(Node::Null)
            }
        }
    }
}

/// CDK / SAM CLI asset metadata (`aws:asset:path` + `aws:asset:property`):
/// the named property (dotted path) replaced by the local asset path before
/// intrinsics are evaluated, so the S3 bucket/key refs it replaces never
/// matter. `None` when the resource has no such metadata.
pub(super) fn with_asset(props: &Node, metadata: &Node) -> Option<Node> {
    let asset = metadata.get("aws:asset:path")?.as_str()?.to_string();
    let property = metadata.get("aws:asset:property")?.as_str()?.to_string();
    let mut out = match props {
        Node::Map(_) => props.clone(),
        _ => Node::Map(Vec::new()),
    };
    let keys: Vec<&str> = property.split('.').collect();
    set_path(&mut out, &keys, Node::String(asset));
    Some(out)
}

fn set_path(node: &mut Node, keys: &[&str], value: Node) {
    let Some((first, rest)) = keys.split_first() else {
        *node = value;
        return;
    };
    if !matches!(node, Node::Map(_)) {
        *node = Node::Map(Vec::new());
    }
    if let Node::Map(entries) = node {
        let idx = match entries.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                entries.push((first.to_string(), Node::Map(Vec::new())));
                entries.len() - 1
            }
        };
        if rest.is_empty() {
            entries[idx].1 = value;
        } else {
            set_path(&mut entries[idx].1, rest, value);
        }
    }
}
