//! `whetstone`: the desktop workbench, and a scriptable CLI over the same engine.

mod cli;

use clap::Parser;

/// Training allocates and frees the same large activation and gradient buffers every step.
/// glibc's defaults hand big blocks back to the kernel (mmap/munmap, then page faults on
/// reuse); keeping them in the heap made a SmolLM2-135M train step ~15 % faster on CPU
/// (docs/benchmarks.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    let args = cli::Cli::parse();
    let code = match cli::run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
