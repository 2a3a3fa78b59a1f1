//! Cost of one policy check on the request path (`cargo run --release -p
//! esb-iam --example check_cost`): a cached decision, a fresh one (an S3 key
//! per request), and a call signed with the box's key (a lookup miss).
//! Prints nanoseconds per check; a measurement, not a test.

use std::collections::BTreeMap;
use std::time::Instant;

use esb_iam::{ArnContext, FunctionPermissions, Iam, Mode, PolicySource};

fn main() {
    let iam = Iam::new(
        Mode::Enforce,
        ArnContext::new("us-east-1", "123456789012"),
        "box",
    );
    let table = |name: &str| PolicySource::Template {
        name: "DynamoDBCrudPolicy".into(),
        parameters: BTreeMap::from([("TableName".into(), name.into())]),
    };
    iam.load(&[FunctionPermissions {
        function: "f".into(),
        role_name: "r".into(),
        policies: vec![
            PolicySource::Managed("AWSLambdaBasicExecutionRole".into()),
            table("a"),
            table("b"),
            table("c"),
            PolicySource::Template {
                name: "S3CrudPolicy".into(),
                parameters: BTreeMap::from([("BucketName".into(), "photos".into())]),
            },
        ],
        external_role: None,
    }]);
    let key = iam.credentials("f").access_key_id;
    let n = 200_000u32;
    let time = |label: &str, f: &mut dyn FnMut(u32)| {
        let start = Instant::now();
        for i in 0..n {
            f(i);
        }
        println!(
            "{label}: {:.0} ns per check",
            start.elapsed().as_nanos() as f64 / f64::from(n)
        );
    };
    let t = "arn:aws:dynamodb:us-east-1:123456789012:table/c";
    time("cached (same table)", &mut |_| {
        assert!(iam.check(&key, "dynamodb:GetItem", t).is_ok());
    });
    time("fresh (new S3 key each time)", &mut |i| {
        let r = format!("arn:aws:s3:::photos/k/{i}");
        assert!(iam.check(&key, "s3:GetObject", &r).is_ok());
    });
    time("box key (not a function)", &mut |_| {
        assert!(
            iam.check("AKIABOXKEY0000000000", "dynamodb:PutItem", t)
                .is_ok()
        );
    });
}
