//! `AWS::Events::Rule` resources with a `ScheduleExpression` and
//! `AWS::Scheduler::Schedule` resources whose targets are functions of the
//! template, as [`Schedule`] entries: the same ones `Schedule` /
//! `ScheduleV2` function events make, so they run the same way.
//!
//! Rules without a schedule (an `EventPattern` on a bus), targets that are
//! not template functions and the properties ESB does not apply
//! (`InputTransformer`, `FlexibleTimeWindow`, `StartDate`, `EndDate`) get a
//! warning each; the resources stay listed as other
//! resources.

use super::{Builder, FunctionIndex, text};
use crate::diag::DiagnosticKind as K;
use crate::model::{AppModel, Schedule};
use crate::node::Node;
use crate::resolve::ResolvedTemplate;

/// `State` as a flag: anything but `DISABLED` runs (AWS's default is
/// `ENABLED`).
fn enabled(state: Option<String>) -> bool {
    !state.is_some_and(|s| s.eq_ignore_ascii_case("DISABLED"))
}

impl Builder<'_, '_> {
    /// Adds the schedule rules and Scheduler schedules of `rt` to
    /// `model.schedules`.
    pub(super) fn eventbridge(
        &mut self,
        rt: &ResolvedTemplate,
        index: &FunctionIndex,
        model: &mut AppModel,
    ) {
        for r in &rt.resources {
            let at = format!("Resources.{}.Properties", r.id);
            match r.rtype.as_str() {
                "AWS::Events::Rule" => {
                    let targets: Vec<&Node> = match r.props.get("Targets") {
                        Some(Node::List(items)) => items.iter().collect(),
                        _ => Vec::new(),
                    };
                    let Some(expression) = text(&r.props, "ScheduleExpression") else {
                        if !targets.is_empty() {
                            self.ctx.warn(
                                K::UnsupportedIntegration,
                                &format!("{at}.EventPattern"),
                                "an event-pattern rule is not run (ESB has no event bus); only ScheduleExpression rules are",
                            );
                        }
                        continue;
                    };
                    let name = text(&r.props, "Name").unwrap_or_else(|| r.id.clone());
                    let on = enabled(text(&r.props, "State"));
                    for (i, t) in targets.into_iter().enumerate() {
                        let tat = format!("{at}.Targets.{i}");
                        if t.get("InputTransformer").is_some() {
                            self.ctx.warn(
                                K::InvalidValue,
                                &format!("{tat}.InputTransformer"),
                                "InputTransformer is not applied by ESB; the whole scheduled event is sent",
                            );
                        }
                        let arn = text(t, "Arn").unwrap_or_default();
                        let Some((_, logical)) = index.lookup(&arn) else {
                            self.ctx.warn(
                                K::UnsupportedIntegration,
                                &format!("{tat}.Arn"),
                                format!("rule target {arn:?} is not a function of this template; not run"),
                            );
                            continue;
                        };
                        model.schedules.push(Schedule {
                            function: logical.to_string(),
                            event: name.clone(),
                            kind: "Schedule".into(),
                            expression: expression.clone(),
                            timezone: None,
                            input: text(t, "Input"),
                            input_path: text(t, "InputPath"),
                            enabled: on,
                        });
                    }
                }
                "AWS::Scheduler::Schedule" => {
                    let Some(expression) = text(&r.props, "ScheduleExpression") else {
                        self.ctx.warn(
                            K::InvalidValue,
                            &format!("{at}.ScheduleExpression"),
                            "schedule has no ScheduleExpression; not run",
                        );
                        continue;
                    };
                    let flexible = r
                        .props
                        .get("FlexibleTimeWindow")
                        .and_then(|w| text(w, "Mode"))
                        .is_some_and(|m| !m.eq_ignore_ascii_case("OFF"));
                    if flexible {
                        self.ctx.warn(
                            K::InvalidValue,
                            &format!("{at}.FlexibleTimeWindow"),
                            "FlexibleTimeWindow is ignored: ESB fires at the scheduled time",
                        );
                    }
                    for key in ["StartDate", "EndDate"] {
                        if r.props.get(key).is_some() {
                            self.ctx.warn(
                                K::InvalidValue,
                                &format!("{at}.{key}"),
                                format!("{key} is not applied by ESB"),
                            );
                        }
                    }
                    let target = r.props.get("Target");
                    let arn = target.and_then(|t| text(t, "Arn")).unwrap_or_default();
                    let Some((_, logical)) = index.lookup(&arn) else {
                        self.ctx.warn(
                            K::UnsupportedIntegration,
                            &format!("{at}.Target.Arn"),
                            format!("schedule target {arn:?} is not a function of this template; not run"),
                        );
                        continue;
                    };
                    model.schedules.push(Schedule {
                        function: logical.to_string(),
                        event: text(&r.props, "Name").unwrap_or_else(|| r.id.clone()),
                        kind: "ScheduleV2".into(),
                        expression,
                        timezone: text(&r.props, "ScheduleExpressionTimezone"),
                        input: target.and_then(|t| text(t, "Input")),
                        input_path: None,
                        enabled: enabled(text(&r.props, "State")),
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Schedule;

    fn load(yaml: &str) -> (crate::model::AppModel, Vec<String>) {
        let loaded = crate::parse_str(
            yaml,
            "template.yaml",
            std::path::Path::new("/tmp"),
            &crate::ResolveOptions::default(),
        )
        .expect("template loads");
        let warnings = loaded.warnings.iter().map(|d| d.message.clone()).collect();
        (loaded.app, warnings)
    }

    const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Resources:
  Tick:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Runtime: python3.11
  Every:
    Type: AWS::Events::Rule
    Properties:
      ScheduleExpression: rate(1 minute)
      Targets:
        - Id: t1
          Arn: !GetAtt Tick.Arn
          Input: '{"k": 1}'
        - Id: t2
          Arn: arn:aws:sqs:us-east-1:123456789012:elsewhere
  Off:
    Type: AWS::Events::Rule
    Properties:
      Name: off-rule
      State: DISABLED
      ScheduleExpression: cron(0 12 * * ? *)
      Targets:
        - Id: t1
          Arn: !GetAtt Tick.Arn
          InputPath: $.detail
  Pattern:
    Type: AWS::Events::Rule
    Properties:
      EventPattern: {source: [aws.s3]}
      Targets:
        - Id: t1
          Arn: !GetAtt Tick.Arn
  Nightly:
    Type: AWS::Scheduler::Schedule
    Properties:
      ScheduleExpression: cron(0 3 * * ? *)
      ScheduleExpressionTimezone: Europe/Paris
      FlexibleTimeWindow: {Mode: FLEXIBLE, MaximumWindowInMinutes: 5}
      Target:
        Arn: !GetAtt Tick.Arn
        RoleArn: arn:aws:iam::123456789012:role/r
        Input: '{"n": 2}'
"#;

    #[test]
    fn schedule_rules_and_scheduler_schedules_become_schedules() {
        let (app, warnings) = load(TEMPLATE);
        let find = |e: &str| -> &Schedule {
            app.schedules
                .iter()
                .find(|s| s.event == e)
                .unwrap_or_else(|| panic!("no schedule {e}: {:?}", app.schedules))
        };
        let every = find("Every");
        assert_eq!(every.function, "Tick");
        assert_eq!(every.kind, "Schedule");
        assert_eq!(every.expression, "rate(1 minute)");
        assert_eq!(every.input.as_deref(), Some(r#"{"k": 1}"#));
        assert!(every.enabled);
        let off = find("off-rule");
        assert!(!off.enabled);
        assert_eq!(off.input_path.as_deref(), Some("$.detail"));
        let nightly = find("Nightly");
        assert_eq!(nightly.kind, "ScheduleV2");
        assert_eq!(nightly.timezone.as_deref(), Some("Europe/Paris"));
        assert_eq!(nightly.input.as_deref(), Some(r#"{"n": 2}"#));
        assert_eq!(app.schedules.len(), 3, "{:?}", app.schedules);
        let all = warnings.join("\n");
        for needle in [
            "not a function of this template",
            "event-pattern rule is not run",
            "FlexibleTimeWindow is ignored",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from {all}");
        }
    }
}
