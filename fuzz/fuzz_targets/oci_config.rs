//! An OCI `config.json` as `discovery.cri` reads it from containerd's and CRI-O's state (its
//! annotations, set by whoever creates the container): no panics; a Pod container it accepts
//! has valid Kubernetes names, and its labels make a container target whose service name is
//! `ebpf/<namespace>/<container>`.
#![no_main]

use ferroscope_targets::cri::pod_container;
use ferroscope_targets::{Target, TargetId};
use libfuzzer_sys::fuzz_target;

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(Ok(pod)) = pod_container(data) else {
        return;
    };
    assert!(dns_label(&pod.namespace), "namespace {:?}", pod.namespace);
    assert!(dns_label(&pod.container_name), "container {:?}", pod.container_name);
    assert!(pod.pod_name.len() <= 253 && pod.pod_name.split('.').all(dns_label), "pod {:?}", pod.pod_name);
    if let Some(uid) = &pod.pod_uid {
        assert!(!uid.is_empty() && uid.len() <= 64);
    }
    let target = Target::new(pod.labels(ID)).unwrap_or_else(|| panic!("no target"));
    assert_eq!(target.id(), &TargetId::Container(ID.to_owned()));
    assert_eq!(target.service_name(), format!("ebpf/{}/{}", pod.namespace, pod.container_name));
});
