// Builds the eBPF object (tracer-ebpf) for the BPF target and leaves it in OUT_DIR, where the
// agent embeds it with `include_bytes_aligned!`: one file ships. `cargo xtask build` installs
// the prerequisites (nightly rust-src, bpf-linker) before cargo gets here.
//
// TRACER_EBPF_OBJECT names an object built before (`cargo xtask fuzz` reuses the test
// build's), which is then embedded as it is.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TRACER_EBPF_OBJECT");
    if let Some(object) = std::env::var_os("TRACER_EBPF_OBJECT") {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("tracer");
        std::fs::copy(&object, &out).map_err(|e| {
            anyhow::anyhow!(
                "TRACER_EBPF_OBJECT {}: {e}",
                std::path::Path::new(&object).display()
            )
        })?;
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("tracer crate has no parent directory"))?;
    let ebpf_dir = workspace.join("tracer-ebpf");
    let common_dir = workspace.join("tracer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir
                .to_str()
                .ok_or_else(|| anyhow::anyhow!("workspace path is not UTF-8"))?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
