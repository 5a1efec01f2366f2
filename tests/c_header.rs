//! include/normkit.h must equal what cbindgen generates from src/capi/ with cbindgen.toml.
//! Regenerate with `NORMKIT_BLESS=1 cargo test --test c_header`.

#[test]
fn c_header_is_up_to_date() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("cbindgen.toml must parse");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{dir}/src/capi/mod.rs"))
        .generate()
        .expect("cbindgen failed to parse src/capi")
        .write(&mut fresh);
    let path = format!("{dir}/include/normkit.h");
    if std::env::var_os("NORMKIT_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write include/normkit.h");
    }
    let current = std::fs::read(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "include/normkit.h is stale: regenerate it with `NORMKIT_BLESS=1 cargo test --test c_header` and commit it"
    );
}
