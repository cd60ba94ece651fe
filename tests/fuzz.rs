//! A schemathesis run against the order API's OpenAPI document: every
//! operation with generated and mutated inputs, and no answer may be a 5xx or
//! break the document. It takes minutes, so a plain `cargo test` leaves it out
//! (ignored); `scripts/test.sh` runs it, as does
//! `cargo test --test fuzz -- --ignored`.

mod support;

use support::api::Api;
use support::{PrivateBroker, within};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "takes minutes: scripts/test.sh runs it"]
async fn fuzzing_the_api_from_its_openapi_document_finds_no_error() {
    let broker = PrivateBroker::start();
    let api = Api::start(&broker, &[]).await;
    let spec = api.get("/api/v1/openapi.json").await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.json()["openapi"], "3.0.3");

    // scripts/fuzz.sh fails with an install hint when schemathesis is missing
    // (scripts/test.sh installs it first).
    // Authenticated as one customer: schemathesis's ignored_auth check also
    // sends every operation without the token and expects it refused.
    let run = tokio::process::Command::new(support::repo_root().join("scripts/fuzz.sh"))
        .arg(format!("http://127.0.0.1:{}", api.port))
        .env("EDA_FUZZ_TOKEN", support::auth::token("customer-fuzz"))
        .kill_on_drop(true)
        .output();
    let out = within(600, "schemathesis", run)
        .await
        .expect("run scripts/fuzz.sh");
    assert!(
        out.status.success(),
        "scripts/fuzz.sh found problems (or could not run):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("No issues found"));
    api.stop().await;
}
