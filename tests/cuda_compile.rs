//! Compile-only checks of the CUDA backend; no GPU needed.
//!
//! * `every_kernel_compiles_for_sm90` / `..._sm80`: NVRTC compiles every kernel family for every
//!   specialisation (storage dtype x head-dim register tile) to PTX and every entry point the
//!   host launches is in the PTX ([`kvsparse::compile_all_ptx`]).
//! * `cuda_new_fails_cleanly_without_a_device`: on a machine without libcuda or without a GPU,
//!   `Cuda::new()` returns `Error::Unavailable` instead of panicking.
//!
//! NVRTC without the CUDA toolkit (what CI does, and what the dev machines do):
//!
//! ```sh
//! python3 -m pip install nvidia-cuda-nvrtc-cu12
//! NVRTC_LIB=$(python3 -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib"))')
//! export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
//! KVSPARSE_REQUIRE=nvrtc cargo test --features cuda --test cuda_compile
//! ```
//!
//! The wheel ships `libnvrtc.so.12` (plus `libnvrtc-builtins.so.12.x`, which libnvrtc loads from
//! the same folder); cudarc 0.19 (feature `cuda-12080`) tries `libnvrtc.so`, `libnvrtc.so.12`,
//! `libnvrtc.so.11`, ... so no symlink is needed. With a CUDA 13 toolkit only, `libnvrtc.so`
//! (the toolkit's dev symlink, in `/usr/local/cuda/lib64`) must be on the loader path.
//!
//! Without NVRTC the compile tests print a note and pass, unless `KVSPARSE_REQUIRE` contains
//! `nvrtc` (CI sets it), which turns the absence into a failure.
#![cfg(feature = "cuda")]

use kvsparse::{compile_all_ptx, Cuda, Error};

fn required() -> bool {
    std::env::var("KVSPARSE_REQUIRE").is_ok_and(|v| v.split(',').any(|s| s.trim() == "nvrtc"))
}

fn compile_for(arch: &str) {
    match compile_all_ptx(arch) {
        Ok(modules) => {
            assert!(!modules.is_empty());
            let total: usize = modules.iter().map(|(_, n)| n).sum();
            println!("{arch}: {} modules, {total} bytes of PTX", modules.len());
            for (name, bytes) in &modules {
                assert!(*bytes > 0, "{name}: empty PTX");
            }
        }
        Err(Error::Unavailable { reason, .. }) if !required() => {
            println!("skipped: {reason} (set KVSPARSE_REQUIRE=nvrtc to make this a failure)");
        }
        Err(e) => panic!("{arch}: {e}"),
    }
}

#[test]
fn every_kernel_compiles_for_sm90() {
    compile_for("sm_90");
}

#[test]
fn every_kernel_compiles_for_sm80() {
    compile_for("sm_80");
}

#[test]
fn cuda_new_fails_cleanly_without_a_device() {
    match Cuda::new() {
        Ok(gpu) => {
            // A real device (the GPU machine): it must describe itself.
            let lines = gpu.info_lines();
            println!("{}", lines.join("\n"));
            assert!(lines.iter().any(|l| l.starts_with("device: ")));
        }
        Err(Error::Unavailable { backend, reason }) => {
            assert_eq!(backend, "cuda");
            assert!(!reason.is_empty());
            println!("cuda unavailable, as expected here: {reason}");
        }
        Err(e) => panic!("expected Unavailable or a device, got {e}"),
    }
}
