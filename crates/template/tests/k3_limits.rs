//! Contract K3: broken or hostile templates fail fast with a location;
//! misspelt properties are named with the nearest known one.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::Path;
use std::time::{Duration, Instant};

use esb_template::{DiagnosticKind, ResolveOptions, parse_str};

fn load(text: &str, name: &str) -> Result<esb_template::Loaded, esb_template::TemplateError> {
    parse_str(text, name, Path::new("/"), &ResolveOptions::new())
}

#[test]
fn k3_200kb_of_nested_brackets_is_rejected_fast_with_a_location() {
    for (text, name) in [
        (format!("Resources: {}", "[".repeat(200_000)), "t.yaml"),
        (
            format!("{{\"Resources\": {}", "{\"a\": ".repeat(40_000)),
            "t.json",
        ),
        (
            format!("Resources:\n  X: {}", "{a: ".repeat(50_000)),
            "t.yaml",
        ),
    ] {
        let started = Instant::now();
        let err = load(&text, name).unwrap_err();
        // Generous bound for a loaded CI machine; it takes milliseconds.
        assert!(started.elapsed() < Duration::from_secs(2), "{name}");
        let d = &err.diagnostics[0];
        assert_eq!(d.kind, DiagnosticKind::TooLarge, "{d}");
        assert!(d.line.is_some() && d.column.is_some(), "{d}");
        assert!(
            d.to_string().contains("nesting deeper than 100 levels"),
            "{d}"
        );
    }
}

#[test]
fn k3_yaml_alias_bomb_fails_in_bounded_time() {
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = (b'a' + i - 1) as char;
        let name = (b'a' + i) as char;
        text.push_str(&format!(
            "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    text.push_str("Resources: {}\n");
    let started = Instant::now();
    let err = load(&text, "t.yaml").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.diagnostics[0].kind, DiagnosticKind::Syntax, "{err}");
}

#[test]
fn k3_misspelt_function_property_warns_with_the_nearest_name() {
    let text = "\
Globals:
  Function:
    MemorySise: 256
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      InlineCode: x
      Runtime: python3.12
      Handler: index.handler
      Timout: 30
      Events:
        Get:
          Type: Api
          Properties:
            Path: /x
            Method: get
            TimeoutInMilis: 100
";
    let loaded = load(text, "t.yaml").unwrap();
    let shown: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        shown.contains(
            &"t.yaml:11:7: warning: Resources.Fn.Properties.Timout: Timout is not a property of AWS::Serverless::Function; did you mean Timeout?"
                .to_string()
        ),
        "{shown:#?}"
    );
    assert!(
        shown.iter().any(|w| w.starts_with("t.yaml:18:13: warning:")
            && w.ends_with(
                "TimeoutInMilis is not a property of event type Api; did you mean TimeoutInMillis?"
            )),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|w| w.starts_with("t.yaml:3:5: warning:")
                && w.contains("(did you mean MemorySize?)")),
        "{shown:#?}"
    );
    // The misspelt key is ignored: the default timeout applies.
    assert_eq!(loaded.app.functions[0].timeout, 3);
}
