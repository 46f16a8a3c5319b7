//! Fuzzes the golden-case loader: any bytes must give a `Case` or an `Error::File`, never a
//! panic, and never an allocation sized by an untrusted header. Cases that parse are also run
//! on the CPU backend (small ones only), so the op construction and dispatch are fuzzed too.
#![no_main]

use kvsparse::golden::Case;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(case) = Case::from_bytes("fuzz.safetensors".as_ref(), data) {
        if let Ok(op) = case.op() {
            let elems: usize = op.buffers().iter().map(|b| b.len).sum();
            if elems < 1 << 16 {
                let _ = case.run(&kvsparse::Cpu::new());
            }
        }
    }
});
