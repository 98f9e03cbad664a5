//! Tests of [`super`] (github.rs).
use super::*;

#[test]
fn the_token_stays_out_of_debug_output() {
    let cfg = GithubConfig {
        api: DEFAULT_API.into(),
        owner: "acme".into(),
        name: "chat".into(),
        branch: "main".into(),
        token: Some("ghp_verysecret".into()),
    };
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("verysecret"), "{shown}");
    assert!(shown.contains("***"));
}

#[test]
fn signatures_are_utc_seconds() {
    assert_eq!(
        signature(1_763_800_000)["date"],
        Value::String("2025-11-22T08:26:40Z".into())
    );
}

#[test]
fn paths_are_encoded() {
    assert_eq!(encode_path("a b/c%"), "a%20b/c%25");
    assert_eq!(
        encode_path(".messages/config.json"),
        ".messages/config.json"
    );
}
