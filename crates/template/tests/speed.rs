//! The 500-function, 5,000-route OpenAPI template loads whole and right
//! (every route bound to its function). How fast is measured by
//! `scripts/bench --only routes`; this test prints the load time
//! (`cargo test --release -p esb-template --test speed -- --nocapture`).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::fmt::Write as _;
use std::time::Instant;

use esb_template::{ResolveOptions, RouteTarget, load};

/// A SAM template: `functions` functions and one REST API whose inline
/// Swagger body has `routes` paths, each `GET` bound with `Fn::Sub` to a
/// function's ARN (round robin).
pub fn generate(functions: usize, routes: usize) -> String {
    let mut t = String::from("Transform: AWS::Serverless-2016-10-31\nResources:\n");
    t.push_str("  Api:\n    Type: AWS::Serverless::Api\n    Properties:\n      StageName: prod\n      DefinitionBody:\n        swagger: '2.0'\n        paths:\n");
    for r in 0..routes {
        let f = r % functions;
        writeln!(
            t,
            "          /r{r}/{{id}}:\n            get:\n              x-amazon-apigateway-integration:\n                type: aws_proxy\n                httpMethod: POST\n                uri: !Sub arn:${{AWS::Partition}}:apigateway:${{AWS::Region}}:lambda:path/2015-03-31/functions/${{F{f}.Arn}}/invocations"
        )
        .unwrap();
    }
    for f in 0..functions {
        writeln!(
            t,
            "  F{f}:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src/\n      Handler: app.h{f}\n      Runtime: python3.12\n      MemorySize: 256"
        )
        .unwrap();
    }
    t
}

#[test]
fn five_hundred_functions_and_five_thousand_routes_load() {
    let dir = std::env::temp_dir().join(format!("esb-template-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("template.yaml");
    std::fs::write(&path, generate(500, 5000)).unwrap();
    let start = Instant::now();
    let loaded = load(&path, &ResolveOptions::new()).unwrap();
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(loaded.warnings.is_empty(), "{:?}", &loaded.warnings[..1]);
    assert_eq!(loaded.app.functions.len(), 500);
    assert_eq!(loaded.app.routes.len(), 5000);
    assert!(
        loaded
            .app
            .routes
            .iter()
            .all(|r| matches!(&r.target, RouteTarget::Function { name } if name.starts_with('F')))
    );
    // The figure is reported, not asserted: speed is measured by
    // `scripts/bench` (its `routes` section times `esb validate` on the same
    // shape), never by timed assertions.
    println!("loaded 500 functions and 5000 routes in {took:?}");
}
