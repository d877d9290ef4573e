// The crate links with bpf-linker, which cargo does not know about: rebuild when it changes.
// `bpf_target_arch` (the machine the agent runs on) selects the syscall table in arch.rs.
fn main() -> aya_build::Result<()> {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    aya_build::emit_bpf_target_arch_cfg()
}
