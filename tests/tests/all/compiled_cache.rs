//! The compiled-code cache on disk: a kind is compiled once per digest,
//! engine and host version; later runners load it; a damaged entry is
//! ignored and rebuilt, and an unsafe cache directory is refused.

use std::path::Path;

use baa_runner_tests::{read_json, Sandbox};

use crate::{grant_all, probe_runner_with, run};

fn compiled_how(sandbox: &Sandbox, cache: &Path, step: &str) -> String {
    let cache = cache.to_path_buf();
    let (runner, _) = probe_runner_with(sandbox, grant_all(), move |config| {
        config.compiled_cache_dir = Some(cache);
    });
    let mut request = sandbox.request("probe", "write note.txt hello");
    request.step_id = step.into();
    let result = futures_block(run(&runner, request));
    assert!(result.ok, "{}", result.summary);
    let metadata = read_json(&result.log_paths.metadata_path);
    metadata["plugin"]["compiled"].as_str().unwrap().to_string()
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn entries(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    found.sort();
    found
}

#[test]
fn a_kind_is_compiled_once_then_loaded_and_a_damaged_entry_is_rebuilt() {
    let sandbox = Sandbox::new();
    let cache = sandbox.dir.path().join("compiled");

    assert_eq!(
        compiled_how(&sandbox, &cache, "first"),
        "compiled, stored in the cache"
    );
    let files = entries(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    // A new runner (a new process, as far as the cache knows) loads it.
    assert_eq!(
        compiled_how(&sandbox, &cache, "second"),
        "loaded from the compiled cache"
    );

    // Damage the entry: it is not trusted, but rebuilt.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    assert_eq!(
        compiled_how(&sandbox, &cache, "third"),
        "recompiled: the cached copy does not match its checksum"
    );
    assert_eq!(
        compiled_how(&sandbox, &cache, "fourth"),
        "loaded from the compiled cache"
    );

    // A truncated entry with a matching checksum is refused by the engine.
    let mut sum = files[0].clone().into_os_string();
    sum.push(baa_runner::plugins::cache::CHECKSUM_SUFFIX);
    std::fs::write(&files[0], b"not machine code").unwrap();
    let checksum = baa_runner::plugins::cache::checksum(b"not machine code");
    std::fs::write(&sum, checksum).unwrap();
    let how = compiled_how(&sandbox, &cache, "fifth");
    assert!(
        how.starts_with("recompiled: the cached copy was refused by the engine"),
        "{how}"
    );
}

#[test]
fn a_cache_directory_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let cache = sandbox.dir.path().join("shared-cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = baa_runner::RunnerConfig {
        compiled_cache_dir: Some(cache),
        ..Default::default()
    };
    let err = baa_runner::Runner::new(config).err().expect("refused");
    let message = err.to_string();
    assert!(message.contains("compiled-cache-dir"), "{message}");
    assert!(message.contains("writable by no one else"), "{message}");
}

#[test]
fn the_cache_keeps_its_size_bound_by_evicting_the_least_recently_used() {
    let sandbox = Sandbox::new();
    let cache = sandbox.dir.path().join("bounded");
    let plugins = crate::probe_plugins_dir(&sandbox);
    let compiled_with_cap = |step: &str| {
        let mut config = baa_runner::RunnerConfig::default();
        config.plugin_dirs.push(plugins.clone());
        config.kinds.insert("probe".into(), grant_all());
        config.compiled_cache_dir = Some(cache.clone());
        config.compiled_cache_max_mib = 1;
        let runner = baa_runner::Runner::new(config).unwrap();
        let mut request = sandbox.request("probe", "true");
        request.step_id = step.into();
        let result = futures_block(run(&runner, request));
        assert!(result.ok, "{}", result.summary);
    };
    compiled_with_cap("first");
    let first = entries(&cache);
    assert_eq!(first.len(), 1, "{first:?}");
    let first_len = std::fs::metadata(&first[0]).unwrap().len();
    // A changed plugin file (one more custom section): another digest.
    let plugin = plugins.join("probe.wasm");
    let mut bytes = std::fs::read(&plugin).unwrap();
    bytes.extend_from_slice(&[0, 6, 5, b'n', b'o', b't', b'e', b'!']);
    std::fs::write(&plugin, &bytes).unwrap();
    compiled_with_cap("second");
    let second = entries(&cache);
    // The two entries together are over the 1 MiB bound: only the newest
    // stays, with its checksum beside it.
    let second_len = std::fs::metadata(&second[0]).unwrap().len();
    assert!(first_len + second_len > 1024 * 1024);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);
    let suffix = baa_runner::plugins::cache::CHECKSUM_SUFFIX;
    assert!(Path::new(&format!("{}{suffix}", second[0].display())).exists());
    assert!(!Path::new(&format!("{}{suffix}", first[0].display())).exists());
}
