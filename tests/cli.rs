//! The `kvsparse` command line as a user meets it: exit codes and messages.

use std::process::Command;

fn kvsparse(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvsparse")).args(args).output().expect("the kvsparse binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn golden() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").display().to_string()
}

#[test]
fn verify_passes_every_golden_case_on_the_cpu() {
    let (code, out, _) = kvsparse(&["verify", "--golden", &golden(), "--backend", "cpu"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().last(), Some("52 passed, 0 failed"));
}

#[test]
fn verify_names_a_malformed_file_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("kvsparse-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(format!("{}/p03_topk_random.safetensors", golden())).unwrap();
    std::fs::write(dir.join("p03_topk_random.safetensors"), &good).unwrap();
    std::fs::write(dir.join("truncated.safetensors"), &good[..good.len() / 2]).unwrap();
    let (code, out, err) = kvsparse(&["verify", "--golden", dir.to_str().unwrap(), "--backend", "cpu"]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("truncated.safetensors"), "{err}");
    assert!(out.contains("1 passed, 0 failed"), "the good case still runs: {out}");
}

#[test]
fn unusable_input_exits_2_with_one_clear_line() {
    for args in [
        vec!["verify", "--golden", "/nonexistent/golden"],
        vec!["verify"],
        vec!["verify", "--golden", "tests/golden", "--backend", "tpu"],
        vec!["frobnicate"],
        vec!["report", "--backend", "tpu"],
        vec!["report", "--preset", "huge"],
        vec!["report", "--dtype", "i32"],
        vec!["report", "--contexts", "0"],
    ] {
        let (code, out, err) = kvsparse(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.starts_with("kvsparse: "), "{args:?}: {err}");
    }
}

#[test]
fn a_backend_asked_for_by_name_that_cannot_run_exits_2() {
    // CUDA is absent here unless this machine has a driver; then the case does not apply.
    let cuda_here = cfg!(feature = "cuda") && std::path::Path::new("/dev/nvidiactl").exists();
    if cuda_here {
        return;
    }
    let (code, out, err) = kvsparse(&["verify", "--golden", &golden(), "--backend", "cuda"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.lines().any(|l| l.contains("cuda")), "{err}");
    let (code, _, err) = kvsparse(&["report", "--backend", "cuda", "--quick"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("kvsparse: ")).count(), 1, "{err}");
}

#[test]
fn info_lists_every_backend() {
    let (code, out, _) = kvsparse(&["info"]);
    assert_eq!(code, 0);
    for b in ["cpu:", "wgpu:", "cuda:"] {
        assert!(out.lines().any(|l| l.starts_with(b)), "{b} missing from:\n{out}");
    }
}
