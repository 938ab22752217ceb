//! Compiles the `.proto` sources under `proto/` with `protox` (a pure-Rust
//! protobuf compiler, so no system `protoc` is needed) and generates Rust
//! messages plus tonic client/server code with `tonic-prost-build`.
//!
//! Every `.proto` file under `proto/` is compiled, so adding a file is enough
//! to get it generated; `lib.rs` must then expose the new package's module.

use std::error::Error;
use std::path::{Path, PathBuf};

use protox::prost::Message as _;

/// Collects every `.proto` file below `dir`, as paths relative to `root`,
/// sorted so that the output does not depend on directory iteration order.
fn proto_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(root, &path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            let relative = path
                .strip_prefix(root)
                .expect("walked path is below the root")
                .to_owned();
            out.push(relative);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Cargo scans a directory given here recursively for changes.
    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    proto_files(&proto_root, &proto_root, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(format!("no .proto files found under {}", proto_root.display()).into());
    }

    // Source info carries the comments that become rustdoc; imports pull in
    // the google.protobuf well-known types bundled with protox.
    let fds = protox::Compiler::new([&proto_root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(&files)?
        .file_descriptor_set();

    // A compact copy of the descriptors (no comments or source spans) is
    // embedded in the library for reflection and debugging.
    let mut compact = fds.clone();
    for file in &mut compact.file {
        file.source_code_info = None;
    }
    std::fs::write(
        out_dir.join("file_descriptor_set.bin"),
        compact.encode_to_vec(),
    )?;

    // `prost::Name` impls give every message its full name and type URL.
    // The domain must be set explicitly: without it prost-build writes type
    // URLs as "/pkg.Message".
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The workspace builds tonic without its transport; callers bring
        // their own channel (anything implementing `GrpcService`).
        .build_transport(false)
        .compile_fds_with_config(fds, config)?;

    Ok(())
}
