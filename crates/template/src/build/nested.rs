//! Nested stacks (`AWS::Serverless::Application`, `AWS::CloudFormation::Stack`)
//! merged into the parent's model: a child's functions are named
//! `Child/LogicalId` (their `FunctionName` becomes an alias), its APIs
//! `Child/ApiId`; a child route on the same method and path as a route of
//! the parent is shadowed (the parent's wins), with a warning.

use std::collections::{HashMap, HashSet};

use super::*;

impl Builder<'_, '_> {
    pub(super) fn merge_child(&mut self, id: &str, mut child: AppModel, model: &mut AppModel) {
        let mut renamed: HashMap<String, String> = HashMap::new();
        let taken: HashSet<String> = model
            .functions
            .iter()
            .flat_map(|f| std::iter::once(f.name.clone()).chain(f.aliases.iter().cloned()))
            .collect();
        for f in &mut child.functions {
            let old = f.name.clone();
            let new = if f.stack.is_empty() {
                format!("{id}/{}", f.logical_id)
            } else {
                format!("{id}/{}", f.name)
            };
            // The logical id is only unique inside its stack: not an alias.
            f.aliases.retain(|a| a != &f.logical_id);
            if f.stack.is_empty() && old != f.logical_id {
                f.aliases.insert(0, old.clone());
            }
            f.aliases.retain(|a| !taken.contains(a));
            f.stack = if f.stack.is_empty() {
                id.to_string()
            } else {
                format!("{id}/{}", f.stack)
            };
            f.name = new.clone();
            renamed.insert(old, new);
        }
        let rename = |n: &str| renamed.get(n).cloned().unwrap_or_else(|| n.to_string());
        for a in &mut child.apis {
            a.logical_id = format!("{id}/{}", a.logical_id);
            a.stack = if a.stack.is_empty() {
                id.to_string()
            } else {
                format!("{id}/{}", a.stack)
            };
            if let Some(f) = &a.function_url {
                let f = rename(f);
                a.base_path = Some(format!("/lambda-url/{f}"));
                a.function_url = Some(f);
            }
            for z in &mut a.auth.authorizers {
                z.function_name = z.function_name.as_deref().map(rename);
            }
        }
        let parent_keys: HashSet<(ApiKind, String, String)> = model
            .routes
            .iter()
            .filter(|r| model.api(&r.api).is_none_or(|a| a.base_path.is_none()))
            .map(|r| (r.api_kind, r.method.clone(), r.path.clone()))
            .collect();
        let child_url_apis: HashSet<String> = child
            .apis
            .iter()
            .filter(|a| a.base_path.is_some())
            .map(|a| a.logical_id.clone())
            .collect();
        for mut r in child.routes {
            r.api = format!("{id}/{}", r.api);
            r.stack = if r.stack.is_empty() {
                id.to_string()
            } else {
                format!("{id}/{}", r.stack)
            };
            if let RouteTarget::Function { name } = &mut r.target {
                *name = rename(name);
            }
            if !r.function_name.is_empty() {
                r.function_name = rename(&r.function_name);
            }
            if !child_url_apis.contains(&r.api)
                && parent_keys.contains(&(r.api_kind, r.method.clone(), r.path.clone()))
            {
                self.ctx.warn(
                    K::DuplicateRoute,
                    &format!("Resources.{id}"),
                    format!(
                        "route {} {} of nested stack {id} (API {}) is shadowed by the parent's route on the same method and path",
                        r.method, r.path, r.api
                    ),
                );
                continue;
            }
            model.routes.push(r);
        }
        for s in &mut child.schedules {
            s.function = rename(&s.function);
        }
        model.functions.extend(child.functions);
        model.apis.extend(child.apis);
        model.tables.extend(child.tables);
        model.buckets.extend(child.buckets);
        model.layers.extend(child.layers);
        model.schedules.extend(child.schedules);
        model.other_resources.extend(child.other_resources);
    }
}
