use which::which;

/// Rebuild when bpf-linker changes (aya-template does the same), so a newly built linker
/// is picked up.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
