// A Rust workload with a known call chain main -> fid_outer -> fid_middle
// -> fid_leaf, built by the tests with rustc -O (no frame pointers, as
// release builds are). Usage: chain SECONDS
use std::time::{Duration, Instant};

#[inline(never)]
fn fid_leaf(n: u64) -> u64 {
    let mut x = n;
    for i in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
    }
    x
}

#[inline(never)]
fn fid_middle(n: u64) -> u64 {
    fid_leaf(n) ^ 0x5555
}

#[inline(never)]
fn fid_outer(n: u64) -> u64 {
    fid_middle(n).wrapping_mul(3)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(5.0);
    // The work size comes from the command line, so none of it is folded away.
    let n: u64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut sink = 0u64;
    while Instant::now() < until {
        sink = sink.wrapping_add(fid_outer(n));
    }
    if sink == 42 {
        println!("{}", sink);
    }
}
