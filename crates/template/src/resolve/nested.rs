//! Nested stacks: loading a child template with its parameters.

use super::*;

impl<'a> Resolver<'a, '_> {
    /// Loads the nested stack `id` once (local `Location` / `TemplateURL`
    /// only), passing its `Parameters` down resolved. Its warnings join this
    /// template's; its errors too (so the parent fails as on AWS).
    pub(super) fn child(&mut self, id: &str) {
        if self.children.iter().any(|(c, _)| c == id) {
            return;
        }
        self.children.push((id.to_string(), None));
        let t = self.t;
        let Some(&idx) = self.active.get(id) else {
            return;
        };
        let r = &t.resources[idx];
        let key = if r.rtype == "AWS::Serverless::Application" {
            "Location"
        } else {
            "TemplateURL"
        };
        let at = format!("Resources.{id}.Properties.{key}");
        let raw = super::intrinsics::with_asset(&r.props, &r.metadata);
        let props = raw.as_ref().unwrap_or(&r.props);
        let location = props.get(key).and_then(|l| self.text(l, &at));
        let Some(location) = location.filter(|l| !l.is_empty()) else {
            self.ctx.warn(
                DiagnosticKind::NestedStack,
                &at,
                format!("nested stack {id} has no local {key} (a Serverless Application Repository app?); not loaded"),
            );
            return;
        };
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("s3://")
            || lower.starts_with("https://")
            || lower.starts_with("http://")
        {
            self.ctx.warn(
                DiagnosticKind::NestedStack,
                &at,
                format!("nested stack {id} is at {location}; ESB cannot fetch it offline"),
            );
            return;
        }
        let path = crate::build::abs_path(&self.base_dir, location.trim_start_matches("file://"));
        if self.chain.contains(&path) {
            self.ctx.warn(
                DiagnosticKind::CyclicReference,
                &at,
                format!(
                    "nested stack {id} includes {} again (a cycle); not loaded",
                    path.display()
                ),
            );
            return;
        }
        if self.chain.len() >= MAX_DEPTH {
            self.ctx.warn(
                DiagnosticKind::NestedStack,
                &at,
                format!("nested stack {id} is deeper than {MAX_DEPTH} levels; not loaded"),
            );
            return;
        }
        let mut overrides = std::collections::BTreeMap::new();
        if let Some(Node::Map(params)) = props.get("Parameters") {
            for (k, v) in params {
                let value =
                    match self.resolve(v, &format!("Resources.{id}.Properties.Parameters.{k}")) {
                        Some(Node::List(items)) => items
                            .iter()
                            .filter_map(Node::scalar_text)
                            .collect::<Vec<_>>()
                            .join(","),
                        Some(n) => n.scalar_text().unwrap_or_default(),
                        None => continue,
                    };
                overrides.insert(k.clone(), value);
            }
        }
        let opts = ResolveOptions {
            region: self.opts.region.clone(),
            account_id: self.opts.account_id.clone(),
            stack_name: format!("{}-{id}", self.opts.stack_name),
            parameter_overrides: overrides,
        };
        let mut chain = self.chain.clone();
        chain.push(path.clone());
        let loaded = crate::load_nested(&path, &opts, chain);
        let (diags, stack) = match loaded {
            Ok((stack, warnings)) => (warnings, Some(stack)),
            Err(e) => (e.diagnostics, None),
        };
        for d in diags {
            if !self.ctx.diags.contains(&d) {
                self.ctx.diags.push(d);
            }
        }
        if let Some(slot) = self.children.iter_mut().find(|(c, _)| c == id) {
            slot.1 = stack;
        }
    }
}
