//! The example app shipped in `examples/app` must load cleanly.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::Path;

use esb_template::model::{ApiKind, FunctionCode};
use esb_template::{ResolveOptions, load};

#[test]
fn example_app_loads_with_seven_functions_and_ten_routes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/app/template.yaml");
    let loaded = load(&path, &ResolveOptions::new()).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let app = &loaded.app;
    let names: Vec<&str> = app.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["hello", "echo", "items", "storage", "chain", "slow", "fail"]
    );
    assert_eq!(app.routes.len(), 10);

    let hello = app.function("HelloFunction").unwrap();
    assert_eq!(hello.runtime.as_deref(), Some("python3.11"));
    assert_eq!(hello.handler.as_deref(), Some("app.handler"));
    assert_eq!(hello.timeout, 10);
    assert_eq!(hello.environment["GREETING"], "Hello");
    assert_eq!(hello.environment["STAGE"], "dev");
    assert_eq!(hello.environment["TABLE_NAME"], "esb-items");
    assert_eq!(hello.environment["BUCKET_NAME"], "esb-data-dev");
    match &hello.code {
        FunctionCode::Zip { code_uri: path } => {
            assert!(path.ends_with("examples/app/src/hello"), "{path:?}")
        }
        other => panic!("{other:?}"),
    }
    let chain = app.function("ChainFunction").unwrap();
    assert_eq!(chain.environment["TARGET_FUNCTION"], "hello");
    assert_eq!(
        app.function("FailFunction")
            .unwrap()
            .reserved_concurrent_executions,
        Some(2)
    );
    assert_eq!(app.function("SlowFunction").unwrap().timeout, 1);

    let rest = app.api("RestApi").unwrap();
    assert_eq!(rest.kind, ApiKind::Rest);
    assert_eq!(rest.stage_name, "dev");
    assert_eq!(rest.binary_media_types, ["image/png"]);
    let http = app.api("HttpApi").unwrap();
    assert_eq!(http.stage_name, "$default");
    assert_eq!(http.cors.as_ref().unwrap().allow_methods, ["GET", "POST"]);

    let proxy = app
        .routes
        .iter()
        .filter(|r| r.path == "/echo/{proxy+}" && r.method == "ANY")
        .count();
    assert_eq!(proxy, 2);
    assert!(app.routes.iter().all(|r| r.auth.authorizer == "NONE"));
    assert_eq!(app.tables[0].name, "esb-items");
    assert_eq!(app.buckets[0].name, "esb-data-dev");
}

#[test]
fn example_app_in_prod_renames_the_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/app/template.yaml");
    let loaded = load(&path, &ResolveOptions::new().parameter("Stage", "prod")).unwrap();
    assert_eq!(loaded.app.tables[0].name, "esb-items-prod");
    assert_eq!(loaded.app.api("RestApi").unwrap().stage_name, "prod");
}
