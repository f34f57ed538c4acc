fn main() {
    // 1 GiB of initial linear memory, far above the host's default limit.
    println!("cargo:rustc-link-arg=--initial-memory=1073741824");
}
