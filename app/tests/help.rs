//! The binary starts and offers every subcommand. (Building this test target also makes cargo
//! build the `whetstone` binary that the workspace's end-to-end tests in `tests/` run.)

#[test]
fn help_lists_every_subcommand() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_whetstone")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["devices", "inspect", "generate", "score", "convert", "train", "export", "data", "eval", "bench"] {
        assert!(text.contains(cmd), "--help does not list `{cmd}`:\n{text}");
    }
}

#[test]
fn unknown_subcommand_fails() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_whetstone")).arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
}
