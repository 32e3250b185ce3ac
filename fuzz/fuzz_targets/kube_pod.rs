//! A Pod object from the Kubernetes API server, as `discovery.kubernetes` turns it into
//! targets: no panics; every target has valid label names, the Pod's namespace and a
//! container name; no targets without a Pod IP; at most one per container and port.
#![no_main]

use ferroscope_targets::is_valid_label_name;
use ferroscope_targets::kubernetes::pod_targets_from_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(targets) = pod_targets_from_json(data) else {
        return;
    };
    assert!(targets.len() <= data.len());
    for t in &targets {
        for (name, value) in t.iter() {
            assert!(is_valid_label_name(name), "label name {name:?}");
            assert!(!value.is_empty());
        }
        assert!(t.contains("__meta_kubernetes_pod_ip"), "a target without a Pod IP: {t}");
        assert!(t.contains("__address__"));
        assert!(matches!(t.get("__meta_kubernetes_pod_container_init"), Some("true" | "false")));
    }
});
