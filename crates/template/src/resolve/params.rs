//! `Parameters` (overrides, defaults, constraints) and `Conditions`.

use super::*;

impl<'a> Resolver<'a, '_> {
    // ---- parameters ----------------------------------------------------

    pub(super) fn parameters(&mut self) -> Vec<(String, Option<String>)> {
        let t = self.t;
        let mut used = Vec::new();
        for (name, def) in &t.parameters {
            let path = format!("Parameters.{name}");
            let ty = def.get("Type").and_then(Node::as_str).unwrap_or("String");
            let overridden = self.opts.override_for(name).map(str::to_string);
            let from_override = overridden.is_some();
            let raw = overridden.or_else(|| def.get("Default").and_then(Node::scalar_text));
            // CDK's deploy-time parameters: the bootstrap version (only its
            // Rules use it) and v1 asset parameters (only asset-replaced
            // properties use them) need no value locally.
            let cdk_only = name == "BootstrapVersion" || name.starts_with("AssetParameters");
            let raw = if cdk_only && !from_override {
                Some(
                    def.get("Default")
                        .and_then(Node::scalar_text)
                        .unwrap_or_default(),
                )
            } else if ty.starts_with("AWS::SSM::Parameter::Value") && !from_override {
                self.ctx.warn(
                    DiagnosticKind::MissingParameterValue,
                    &path,
                    format!(
                        "parameter {name} of type {ty} cannot be read offline; pass --parameter-overrides {name}=VALUE"
                    ),
                );
                None
            } else {
                if raw.is_none() {
                    self.ctx.warn(
                        DiagnosticKind::MissingParameterValue,
                        &path,
                        format!("parameter {name} has no Default and no override"),
                    );
                }
                raw
            };
            let list_type = ty == "CommaDelimitedList" || ty.starts_with("List<");
            let value = raw.as_ref().map(|v| {
                if list_type {
                    Node::List(
                        v.split(',')
                            .map(|s| Node::String(s.trim().to_string()))
                            .collect(),
                    )
                } else {
                    Node::String(v.clone())
                }
            });
            if let Some(v) = &raw {
                let items: Vec<String> = if list_type {
                    v.split(',').map(|s| s.trim().to_string()).collect()
                } else {
                    vec![v.clone()]
                };
                self.check_constraints(name, def, ty, &items, from_override, &path);
            }
            self.params.insert(name.clone(), value);
            used.push((name.clone(), raw));
        }
        for key in self.opts.parameter_overrides.keys() {
            if !t.parameters.iter().any(|(n, _)| n == key) {
                self.ctx.warn(
                    DiagnosticKind::UnknownParameter,
                    "Parameters",
                    format!("override for {key}, which the template does not declare"),
                );
            }
        }
        used
    }

    pub(super) fn check_constraints(
        &mut self,
        name: &str,
        def: &Node,
        ty: &str,
        items: &[String],
        from_override: bool,
        path: &str,
    ) {
        let source = if from_override {
            " (from --parameter-overrides)"
        } else {
            ""
        };
        let mut problems = Vec::new();
        if let Some(Node::List(allowed)) = def.get("AllowedValues") {
            let allowed: Vec<String> = allowed.iter().filter_map(Node::scalar_text).collect();
            for v in items {
                if !allowed.contains(v) {
                    problems.push(format!(
                        "value {v:?}{source} of parameter {name} is not in AllowedValues [{}]",
                        allowed.join(", ")
                    ));
                }
            }
        }
        for v in items {
            let len = v.chars().count() as u64;
            if let Some(min) = def.get("MinLength").and_then(Node::as_u64)
                && len < min
            {
                problems.push(format!(
                    "value {v:?}{source} of parameter {name} is shorter than MinLength {min}"
                ));
            }
            if let Some(max) = def.get("MaxLength").and_then(Node::as_u64)
                && len > max
            {
                problems.push(format!(
                    "value {v:?}{source} of parameter {name} is longer than MaxLength {max}"
                ));
            }
            if ty == "Number" || ty == "List<Number>" {
                match v.trim().parse::<f64>() {
                    Err(_) => problems.push(format!(
                        "value {v:?}{source} of parameter {name} is not a number"
                    )),
                    Ok(n) => {
                        let bound = |k: &str| {
                            def.get(k)
                                .and_then(Node::scalar_text)
                                .and_then(|s| s.parse::<f64>().ok())
                        };
                        if let Some(min) = bound("MinValue")
                            && n < min
                        {
                            problems.push(format!(
                                "value {v}{source} of parameter {name} is below MinValue {min}"
                            ));
                        }
                        if let Some(max) = bound("MaxValue")
                            && n > max
                        {
                            problems.push(format!(
                                "value {v}{source} of parameter {name} is above MaxValue {max}"
                            ));
                        }
                    }
                }
            }
        }
        for p in problems {
            self.ctx.warn(DiagnosticKind::DisallowedValue, path, p);
        }
    }

    // ---- conditions ----------------------------------------------------

    /// Evaluates a named condition once; unknown names and cycles are errors.
    pub(super) fn condition(&mut self, name: &str, path: &str) -> bool {
        if let Some(v) = self.cond_cache.get(name) {
            return *v;
        }
        if let Some(pos) = self.cond_stack.iter().position(|n| n == name) {
            let mut cycle: Vec<&str> = self.cond_stack[pos..].iter().map(String::as_str).collect();
            cycle.push(name);
            self.ctx.error(
                DiagnosticKind::CyclicReference,
                &format!("Conditions.{}", self.cond_stack[pos]),
                format!("cyclic condition: {}", cycle.join(" -> ")),
            );
            return false;
        }
        let t = self.t;
        let Some((_, expr)) = t.conditions.iter().find(|(n, _)| n == name) else {
            self.ctx.error(
                DiagnosticKind::UnknownCondition,
                path,
                format!("condition {name} is not declared in Conditions"),
            );
            self.cond_cache.insert(name.to_string(), false);
            return false;
        };
        self.cond_stack.push(name.to_string());
        let v = self.cond_expr(expr, &format!("Conditions.{name}"));
        self.cond_stack.pop();
        self.cond_cache.insert(name.to_string(), v);
        v
    }

    pub(super) fn cond_expr(&mut self, node: &Node, path: &str) -> bool {
        match node {
            Node::Fn(f, arg) => match (f.as_str(), arg.as_ref()) {
                ("Fn::Equals", Node::List(items)) if items.len() == 2 => {
                    let a = self.resolve(&items[0], path);
                    let b = self.resolve(&items[1], path);
                    match (
                        a.as_ref().and_then(Node::scalar_text),
                        b.as_ref().and_then(Node::scalar_text),
                    ) {
                        (Some(a), Some(b)) => a == b,
                        _ => a == b,
                    }
                }
                ("Fn::And", Node::List(items)) => {
                    let mut all = true;
                    for i in items {
                        all &= self.cond_expr(i, path);
                    }
                    all
                }
                ("Fn::Or", Node::List(items)) => {
                    let mut any = false;
                    for i in items {
                        any |= self.cond_expr(i, path);
                    }
                    any
                }
                ("Fn::Not", Node::List(items)) if items.len() == 1 => {
                    !self.cond_expr(&items[0], path)
                }
                ("Condition", Node::String(name)) => self.condition(name, path),
                _ => {
                    let v = self.resolve(node, path);
                    self.expect_bool(v.as_ref(), path)
                }
            },
            other => {
                let v = Some(other.clone());
                self.expect_bool(v.as_ref(), path)
            }
        }
    }

    pub(super) fn expect_bool(&mut self, v: Option<&Node>, path: &str) -> bool {
        match v.and_then(Node::as_bool) {
            Some(b) => b,
            None => {
                self.ctx.warn(
                    DiagnosticKind::InvalidValue,
                    path,
                    "condition does not evaluate to true or false; taken as false",
                );
                false
            }
        }
    }
}
