use super::*;

const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int","default":0}]}"#;

#[test]
fn same_schema_same_id_even_with_other_whitespace_and_key_order() {
    let store = Store::in_memory();
    let first = store.register("s-value", V1).expect("register");
    let reordered = r#"{ "fields":[{"type":"string","name":"a"}], "name":"R", "type":"record" }"#;
    assert_eq!(store.register("s-value", reordered).expect("again"), first);
    let other = store.register("t-value", V1).expect("other subject");
    assert_eq!(other.id, first.id);
    assert_eq!(other.version, 1);
}

#[test]
fn versions_grow_and_are_not_reused_after_delete() {
    let store = Store::in_memory();
    store.register("s", V1).expect("v1");
    assert_eq!(store.register("s", V2).expect("v2").version, 2);
    store.delete_version("s", "2").expect("delete v2");
    assert_eq!(store.version("s", "latest").expect("latest").version, 1);
    let again = store.register("s", V2).expect("v2 again");
    assert_eq!(again.version, 3, "a deleted version number is never reused");
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (id1, id2) = {
        let store = Store::open(dir.path()).expect("open");
        (
            store.register("a", V1).expect("a").id,
            store.register("b", V2).expect("b").id,
        )
    };
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.version("a", "1").expect("a v1").id, id1);
    assert_eq!(store.register("b", V2).expect("b again").id, id2);
    assert_eq!(store.register("c", r#""string""#).expect("c").id, id2 + 1);
}

#[test]
fn a_corrupt_state_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join(STATE_FILE), b"{not json").expect("write");
    let err = Store::open(dir.path()).expect_err("corrupt");
    assert!(err.to_string().contains("state.json"), "{err}");
}
