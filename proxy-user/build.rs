//! Builds `proxy-ebpf` for the BPF target with nightly and bpf-linker, and leaves the
//! object in OUT_DIR for `include_bytes_aligned!`. Without bpf-linker (a machine where
//! `cargo xtask setup` has not run) it embeds an empty object instead, so the unit tests
//! still build; the agent then refuses to start in eBPF mode and says why.
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let have_linker = Command::new("bpf-linker").arg("--version").output().is_ok();
    if !have_linker {
        println!(
            "cargo:warning=bpf-linker not found: building proxy-agent without its BPF object \
             (run `cargo xtask setup`, then rebuild)"
        );
        fs::write(out_dir.join("proxy-ebpf"), b"").context("writing empty BPF object")?;
        // Run again once bpf-linker is installed where `cargo install` puts it (a path that
        // does not exist makes cargo re-run the script on every build until it does).
        let cargo_home = env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
        if let Some(home) = cargo_home {
            println!(
                "cargo:rerun-if-changed={}",
                home.join("bin/bpf-linker").display()
            );
        }
        println!("cargo:rustc-cfg=bpf_object_missing");
        println!("cargo:rustc-check-cfg=cfg(bpf_object_missing)");
        return Ok(());
    }
    println!("cargo:rustc-check-cfg=cfg(bpf_object_missing)");
    let package = aya_build::Package {
        name: "proxy-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../proxy-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
