//! The CUDA module store across backends of one process (each [`Cuda`] has its own module table,
//! so a second one loads what the first stored, as a second process would): the first compiles
//! with NVRTC and stores the CUBIN, the second loads it from the store without rewriting it, and
//! a CUBIN that is damaged, or intact but refused by the driver, is compiled again and replaced.
//!
//! Runs only where a CUDA device exists; `KVSPARSE_REQUIRE=cuda` turns a missing device into a
//! failure. One test in this binary: it sets `KVSPARSE_CACHE_DIR` before the backend reads it
//! (once per process), which no other test could race.

#![cfg(feature = "cuda")]

mod common;

use kvsparse::{ops::TopK, Backend, Cuda, DType, HostData};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Top-2 of four scores on `gpu` (loads the `topk` module).
fn top2(gpu: &Cuda) -> HostData {
    let op = TopK::new(1, 4, 2).unwrap();
    let scores = gpu.upload(&HostData::F32(vec![0.5, 2.0, 2.0, -1.0])).unwrap();
    let mut idx = gpu.alloc(DType::I32, op.out_k()).unwrap();
    gpu.topk(&op, &scores, &mut idx).unwrap();
    gpu.download(&idx).unwrap()
}

/// The files in `dir` with their modification times, by name.
fn listing(dir: &Path) -> Vec<(String, SystemTime)> {
    let mut files: Vec<(String, SystemTime)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().modified().unwrap()))
        .collect();
    files.sort();
    files
}

/// The stored `topk` entry: its CUBIN and key file.
fn topk_entry(dir: &Path) -> (PathBuf, PathBuf) {
    let name = listing(dir).into_iter().map(|(n, _)| n).find(|n| n.starts_with("topk-") && n.ends_with(".cubin"));
    let cubin = dir.join(name.expect("no stored topk CUBIN"));
    (cubin.clone(), cubin.with_extension("key"))
}

/// 64-bit FNV-1a, as the store checksums CUBINs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Replaces the entry's CUBIN with `bytes` and, where `checksum_too`, its key file's checksum
/// line with one that matches them (so only the driver can tell).
fn replace_cubin(cubin: &Path, key: &Path, bytes: &[u8], checksum_too: bool) {
    std::fs::write(cubin, bytes).unwrap();
    if checksum_too {
        let text = std::fs::read_to_string(key).unwrap();
        let body = text.trim_end_matches('\n').rsplit_once('\n').unwrap().0;
        let line = format!("// cubin: {} bytes, fnv1a {:016x}", bytes.len(), fnv1a(bytes));
        std::fs::write(key, format!("{body}\n{line}\n")).unwrap();
    }
}

#[test]
fn a_second_backend_loads_the_stored_cubin_and_a_bad_one_is_replaced() {
    let dir = std::env::temp_dir().join(format!("kvsparse-cuda-module-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("KVSPARSE_CACHE_DIR", &dir);
    std::env::set_var("KVSPARSE_CUDA_LOG", "1");
    std::env::remove_var("KVSPARSE_CUDA_CACHE");
    std::env::remove_var("KVSPARSE_CUDA_PTX");
    let Some(first) = common::cuda_or_skip() else { return };
    let expected = HostData::I32(vec![1, 2]);
    assert_eq!(top2(&first), expected);
    let stored = listing(&dir);
    let (cubin, key) = topk_entry(&dir);
    assert!(key.is_file(), "no key file beside {}", cubin.display());
    assert!(stored.iter().all(|(n, _)| !n.ends_with(".tmp")), "temporary files left: {stored:?}");

    // A hit loads the stored CUBIN and writes nothing.
    assert_eq!(top2(&common::cuda_or_skip().unwrap()), expected);
    assert_eq!(listing(&dir), stored, "a hit rewrote the store");

    // A damaged CUBIN (checksum mismatch) and one that the driver refuses (checksum matches;
    // NUL-terminated, as the driver reads an image that is not ELF as PTX text) are compiled
    // again and replaced.
    let good = std::fs::read(&cubin).unwrap();
    for checksum_too in [false, true] {
        replace_cubin(&cubin, &key, b"not a cubin\0", checksum_too);
        assert_eq!(top2(&common::cuda_or_skip().unwrap()), expected);
        assert_eq!(
            std::fs::read(&cubin).unwrap().len(),
            good.len(),
            "entry not replaced (checksum_too {checksum_too})"
        );
    }
    // The replaced entry is a hit again.
    let replaced = listing(&dir);
    assert_eq!(top2(&common::cuda_or_skip().unwrap()), expected);
    assert_eq!(listing(&dir), replaced, "the replaced entry missed");
    let _ = std::fs::remove_dir_all(&dir);
}
