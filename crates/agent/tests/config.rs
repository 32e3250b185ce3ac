//! `ferroscope run --config`: every `pyroscope.ebpf` argument with its default and a
//! non-default value, every kind of invalid input reported with file:line:column and key,
//! relabel rules with Prometheus semantics, and the shipped examples.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferroscope_agent::Error;
use ferroscope_agent::config::{self, Api, Comm, Config, Demangle};
use ferroscope_targets::{Labels, TargetId, build_targets, relabel};

#[track_caller]
fn parse(text: &str) -> (Config, Vec<String>) {
    config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{text}\n---\n{e}"))
}

#[track_caller]
fn parse_err(text: &str) -> (usize, String, String) {
    match config::parse(text, "test.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(Error::Config {
            file,
            line,
            column,
            key,
            message,
        }) => {
            assert_eq!(file, "test.toml");
            assert!(column >= 1);
            (line, key, message)
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn every_ebpf_argument_has_alloys_default() {
    let (c, warnings) = parse("");
    let e = &c.ebpf;
    assert_eq!(e.collect_interval, Duration::from_secs(15));
    assert_eq!(e.sample_rate, 19);
    for name in ferroscope_agent::config::PYROSCOPE_RUNTIME_KEYS {
        assert!(e.runtime_enabled(name), "{name}_enabled defaults to true");
    }
    assert!(e.disabled_runtimes().is_empty());
    assert_eq!(e.demangle, Demangle::None);
    assert_eq!(e.off_cpu_threshold, 0.0);
    assert!(!e.load_probe);
    assert!(e.u_probe_links.is_empty());
    assert!(!e.verbose_mode);
    assert!(!e.lazy_mode);
    assert_eq!(e.comm, Comm::None);
    assert!(!e.pid_label);
    assert!(e.kernel_frames);
    assert!(e.targets_only);
    assert_eq!(e.symb_cache_path, PathBuf::from("/tmp/symb-cache"));
    assert_eq!(e.symb_cache_size, 2048);
    assert!(e.deprecated_set().is_empty());
    assert!(c.targets.is_empty() && c.relabel.is_empty() && !c.discovery.any());
    assert!(c.write.endpoint.is_empty() && c.external_labels.is_empty());
    assert_eq!(c.server.listen_address.to_string(), "127.0.0.1:4100");
    assert_eq!(c.output.dir, PathBuf::from("/var/lib/ferroscope/profiles"));
    // Nothing to profile: said once.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("nothing will be profiled"),
        "{warnings:?}"
    );
}

#[test]
fn every_ebpf_argument_takes_a_non_default_value() {
    let (c, warnings) = parse(
        r#"
[ebpf]
collect_interval = "1m30s"
sample_rate = 97
python_enabled = false
perl_enabled = false
php_enabled = false
hotspot_enabled = false
ruby_enabled = false
v8_enabled = false
dotnet_enabled = false
go_enabled = false
demangle = "templates"
off_cpu_threshold = 0.25
load_probe = true
u_probe_links = ["/usr/lib/libc.so.6:malloc", "/bin/app:main.run"]
verbose_mode = true
lazy_mode = true
comm = "both"
pid_label = true
kernel_frames = false
targets_only = false
symb_cache_path = "/var/cache/ferroscope"
symb_cache_size = 4096
"#,
    );
    // This test binary links no runtime plug-in: turning pyroscope.ebpf's runtimes off is
    // accepted silently.
    assert!(warnings.is_empty(), "{warnings:?}");
    let e = &c.ebpf;
    assert_eq!(e.collect_interval, Duration::from_secs(90));
    assert_eq!(e.sample_rate, 97);
    let mut off = e.disabled_runtimes();
    off.sort();
    let mut all: Vec<String> = ferroscope_agent::config::PYROSCOPE_RUNTIME_KEYS
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.sort();
    assert_eq!(off, all);
    assert_eq!(e.demangle, Demangle::Templates);
    assert_eq!(e.off_cpu_threshold, 0.25);
    assert!(e.load_probe && e.verbose_mode && e.lazy_mode && e.pid_label);
    assert_eq!(
        e.u_probe_links,
        ["/usr/lib/libc.so.6:malloc", "/bin/app:main.run"]
    );
    assert_eq!(e.comm, Comm::Both);
    assert!(!e.kernel_frames && !e.targets_only);
    assert_eq!(e.symb_cache_path, PathBuf::from("/var/cache/ferroscope"));
    assert_eq!(e.symb_cache_size, 4096);
}

#[test]
fn enum_values_and_threshold_bounds() {
    for (v, want) in [
        ("none", Demangle::None),
        ("simplified", Demangle::Simplified),
        ("templates", Demangle::Templates),
        ("full", Demangle::Full),
    ] {
        assert_eq!(
            parse(&format!("[ebpf]\ndemangle = \"{v}\""))
                .0
                .ebpf
                .demangle,
            want
        );
    }
    for (v, want) in [
        ("none", Comm::None),
        ("label", Comm::Label),
        ("stackframe", Comm::Stackframe),
        ("both", Comm::Both),
    ] {
        assert_eq!(parse(&format!("[ebpf]\ncomm = \"{v}\"")).0.ebpf.comm, want);
    }
    // Integers are numbers too: `off_cpu_threshold = 1` and `= 0` are valid.
    for (v, want) in [
        ("0", 0.0),
        ("1", 1.0),
        ("0.0", 0.0),
        ("1.0", 1.0),
        ("0.001", 0.001),
    ] {
        assert_eq!(
            parse(&format!("[ebpf]\noff_cpu_threshold = {v}"))
                .0
                .ebpf
                .off_cpu_threshold,
            want
        );
    }
}

#[test]
fn deprecated_arguments_are_accepted_with_one_warning_each() {
    let names = [
        ("pid_cache_size", "32"),
        ("build_id_cache_size", "64"),
        ("same_file_cache_size", "8"),
        ("cache_rounds", "3"),
        ("go_table_fallback", "false"),
        ("symbols_map_size", "16384"),
        ("pid_map_size", "2048"),
        ("collect_user_profile", "true"),
        ("collect_kernel_profile", "true"),
        ("container_id_cache_size", "1024"),
    ];
    let mut text = String::from("[ebpf]\ntargets_only = false\n");
    for (k, v) in names {
        text.push_str(&format!("{k} = {v}\n"));
    }
    let (c, warnings) = parse(&text);
    assert_eq!(warnings.len(), names.len(), "{warnings:?}");
    for (i, (k, _)) in names.iter().enumerate() {
        let w = &warnings[i];
        assert!(w.starts_with(&format!("test.toml:{}:", i + 3)), "{w}");
        assert!(
            w.contains(&format!("ebpf.{k} is deprecated")) && w.contains("remove it"),
            "{w}"
        );
    }
    assert_eq!(c.ebpf.deprecated_set().len(), names.len());
}

#[test]
fn invalid_values_name_file_line_and_key() {
    // (file, line, key, part of the message)
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "[ebpf]\nsample_rate = \"fast\"",
            2,
            "ebpf.sample_rate",
            "an integer from 1 to 10000",
        ),
        (
            "[ebpf]\nsample_rate = 0",
            2,
            "ebpf.sample_rate",
            "out of range",
        ),
        (
            "[ebpf]\nsample_rate = -5",
            2,
            "ebpf.sample_rate",
            "out of range",
        ),
        (
            "[ebpf]\n\nsampel_rate = 19",
            3,
            "ebpf.sampel_rate",
            "expected one of `collect_interval`, `sample_rate`",
        ),
        (
            "[ebpf]\ncollect_interval = \"15\"",
            2,
            "ebpf.collect_interval",
            "e.g. \"15s\"",
        ),
        (
            "[ebpf]\ncollect_interval = 15",
            2,
            "ebpf.collect_interval",
            "duration string",
        ),
        (
            "[ebpf]\ncollect_interval = \"0s\"",
            2,
            "ebpf.collect_interval",
            "longer than zero",
        ),
        (
            "[ebpf]\ndemangle = \"pretty\"",
            2,
            "ebpf.demangle",
            "`none`, `simplified`, `templates`, `full`",
        ),
        (
            "[ebpf]\ncomm = \"yes\"",
            2,
            "ebpf.comm",
            "`none`, `label`, `stackframe`, `both`",
        ),
        (
            "[ebpf]\noff_cpu_threshold = 1.5",
            2,
            "ebpf.off_cpu_threshold",
            "between 0 and 1",
        ),
        (
            "[ebpf]\noff_cpu_threshold = -0.1",
            2,
            "ebpf.off_cpu_threshold",
            "between 0 and 1",
        ),
        (
            "[ebpf]\npython_enabled = \"yes\"",
            2,
            "ebpf.python_enabled",
            "expected a boolean",
        ),
        (
            "[ebpf]\nu_probe_links = \"a:b\"",
            2,
            "ebpf.u_probe_links",
            "expected a sequence",
        ),
        (
            "[ebpf]\nu_probe_links = [\n  \"/lib/libc.so.6:malloc\",\n  \"malloc\",\n]",
            2,
            "ebpf.u_probe_links",
            "PATH:SYMBOL",
        ),
        (
            "[ebpf]\npid_cache_size = \"big\"",
            2,
            "ebpf.pid_cache_size",
            "expected i64",
        ),
        (
            "[ebpf]\nsymb_cache_size = -1",
            2,
            "ebpf.symb_cache_size",
            "u64",
        ),
        (
            "colect_interval = \"15s\"",
            1,
            "colect_interval",
            "expected one of `ebpf`, `targets`",
        ),
        (
            "[[targets]]\n__process_pid__ = 42",
            2,
            "targets.__process_pid__",
            "expected a string",
        ),
        (
            "[[relabel]]\naction = \"rename\"",
            2,
            "relabel.action",
            "`replace`, `keep`, `drop`",
        ),
        (
            "[[relabel]]\nsource_labels = [\"a\"]",
            1,
            "relabel",
            "needs `target_label`",
        ),
        (
            "[[relabel]]\naction = \"hashmod\"\ntarget_label = \"shard\"",
            1,
            "relabel",
            "non-zero `modulus`",
        ),
        (
            "[[relabel]]\naction = \"keep\"\nregex = \"(\"",
            1,
            "relabel",
            "does not compile",
        ),
        (
            "[[relabel]]\naction = \"keep\"\nregexp = \"a\"",
            3,
            "relabel.regexp",
            "unknown field `regexp`",
        ),
        (
            "[[discovery.process]]\nrefresh_interval = \"soon\"",
            2,
            "discovery.process.refresh_interval",
            "invalid duration",
        ),
        (
            "[discovery]\nswarm = {}",
            2,
            "discovery.swarm",
            "expected one of `process`, `docker`, `kubernetes`, `cri`",
        ),
        (
            "[discovery]\nkubernetes = {}",
            2,
            "discovery.kubernetes",
            "expected a sequence",
        ),
        (
            "[[discovery.docker]]\nrefresh_interval = \"5s\"",
            1,
            "discovery.docker",
            "missing field `host`",
        ),
        (
            "[[discovery.docker]]\nhost = \"https://docker:2376\"",
            2,
            "discovery.docker.host",
            "TLS to the Docker daemon is not supported",
        ),
        (
            "[[discovery.docker]]\nhost = \"/var/run/docker.sock\"",
            2,
            "discovery.docker.host",
            "use unix:///path/to/docker.sock",
        ),
        (
            "[[discovery.docker]]\nhost = \"unix:///d.sock\"\n[[discovery.docker.filter]]\nname = \"label\"\nvalue = \"a\"",
            5,
            "discovery.docker.filter.value",
            "unknown field `value`",
        ),
        (
            "[[discovery.kubernetes]]\nrole = \"node\"",
            2,
            "discovery.kubernetes.role",
            "role \"node\" is not supported: a profiler matches processes by container",
        ),
        (
            "[[discovery.kubernetes]]\nselectors = [{ role = \"pod\" }]",
            1,
            "discovery.kubernetes",
            "missing field `role`",
        ),
        (
            "[[discovery.kubernetes]]\nrole = \"pod\"\napi_server = \"https://a\"\nkubeconfig_file = \"/k\"",
            1,
            "discovery.kubernetes",
            "at most one of api_server and kubeconfig_file",
        ),
        (
            "[[discovery.kubernetes]]\nrole = \"pod\"\nbearer_token_file = \"/t\"",
            1,
            "discovery.kubernetes",
            "go with api_server",
        ),
        (
            "[[discovery.kubernetes]]\nrole = \"pod\"\napi_server = \"10.0.0.1:6443\"",
            1,
            "discovery.kubernetes",
            "must start with https://",
        ),
        (
            "[[discovery.kubernetes]]\nrole = \"pod\"\n[[discovery.kubernetes.selectors]]\nrole = \"pod\"\nfield = \"spec.nodeName=${NODE\"",
            5,
            "discovery.kubernetes.selectors.field",
            "unclosed",
        ),
        (
            "[[discovery.cri]]\nrefresh_interval = \"0s\"",
            2,
            "discovery.cri.refresh_interval",
            "longer than zero",
        ),
        (
            "[[discovery.cri]]\ncontainerd_state_dir = \"/run/containerd\"",
            2,
            "discovery.cri.containerd_state_dir",
            "unknown field `containerd_state_dir`",
        ),
        (
            "[[targets]]\n__process_pid__ = \"1\"\n[[targets]]\nservice_name = \"web\"",
            3,
            "targets",
            "names neither a process nor a container: give it __process_pid__",
        ),
        (
            "targets = [{ service_name = \"web\" }]",
            1,
            "targets",
            "names neither a process nor a container",
        ),
        (
            "[[relabel]]\naction = \"keep\"\nsource_labels = [\"a\"]\nregex = \"((\"",
            1,
            "relabel",
            "regex \"((\" does not compile (unclosed group)",
        ),
        (
            "[[write.endpoint]]\nremote_timeout = \"1s\"",
            1,
            "write.endpoint",
            "missing field `url`",
        ),
        (
            "[[write.endpoint]]\nurl = \"pyroscope:4040\"",
            1,
            "write.endpoint",
            "http:// or https://",
        ),
        (
            "[[write.endpoint]]\nurl = \"http://p\"\napi = \"grpc\"",
            3,
            "write.endpoint.api",
            "expected `push` or `ingest`",
        ),
        (
            "[[write.endpoint]]\nurl = \"http://p\"\nremote_timeout = \"10\"",
            3,
            "write.endpoint.remote_timeout",
            "invalid duration",
        ),
        (
            "[[write.endpoint]]\nurl = \"http://p\"\nmax_backoff_retries = -1",
            3,
            "write.endpoint.max_backoff_retries",
            "u32",
        ),
        (
            "[[write.endpoint]]\nurl = \"http://p\"\nmin_backoff_period = \"10m\"",
            1,
            "write.endpoint",
            "longer than max_backoff_period",
        ),
        (
            "[[write.endpoint]]\nurl = \"http://p\"\nbearer_token = \"t\"\nbasic_auth = { username = \"u\", password = \"p\" }",
            1,
            "write.endpoint",
            "at most one of basic_auth, bearer_token",
        ),
        (
            "[[write.endpoint]]\nurl = \"http://p\"\nbasic_auth = { username = \"u\" }",
            1,
            "write.endpoint",
            "password or password_file",
        ),
        (
            "[[write.endpoint]]\nurl = \"http://p\"\nbasic_auth = { username = \"u\", pasword = \"x\" }",
            3,
            "write.endpoint.basic_auth",
            "unknown field `pasword`",
        ),
        (
            "[[write.endpoint]]\nurl = \"http://p\"\nheaders = { \"Bad Header\" = \"x\" }",
            1,
            "write.endpoint",
            "not a valid HTTP header name",
        ),
        (
            "[external_labels]\n\"bad-name\" = \"x\"",
            1,
            "external_labels",
            "letters, digits, '_' and '.'",
        ),
        (
            "[server]\nlisten_address = \"localhost\"",
            2,
            "server.listen_address",
            "127.0.0.1:4100",
        ),
        (
            "[output]\nmax_age = \"1 day\"",
            2,
            "output.max_age",
            "invalid duration",
        ),
        (
            "[output]\nmax_bytes = \"1GiB\"",
            2,
            "output.max_bytes",
            "u64",
        ),
        ("[ebpf\nsample_rate = 1", 1, "ebpf", ""),
    ];
    for &(text, line, key, want) in cases {
        let (got_line, got_key, message) = parse_err(text);
        assert_eq!(
            (got_line, got_key.as_str()),
            (line, key),
            "{text}\n---\n{message}"
        );
        assert!(message.contains(want), "{text}\n---\n{message}");
    }
    // The whole message reads file:line:column: key: what.
    let err = config::parse("[ebpf]\ndemangle = \"pretty\"\n", "/etc/ferroscope.toml")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("/etc/ferroscope.toml:2:12: invalid configuration at `ebpf.demangle`: unknown variant `pretty`"),
        "{err}"
    );
}

#[test]
fn durations_in_every_form() {
    for (text, want) in [
        ("15s", Duration::from_secs(15)),
        ("1m", Duration::from_secs(60)),
        ("500ms", Duration::from_millis(500)),
        ("1h30m", Duration::from_secs(5400)),
        ("2.5s", Duration::from_millis(2500)),
    ] {
        let (c, _) = parse(&format!("[ebpf]\ncollect_interval = \"{text}\""));
        assert_eq!(c.ebpf.collect_interval, want, "{text}");
    }
}

#[test]
fn write_endpoints() {
    let (c, _) = parse(
        r#"
[[write.endpoint]]
url = "http://pyroscope:4040"

[[write.endpoint]]
url = "https://profiles-prod.grafana.net"
name = "cloud"
api = "ingest"
basic_auth = { username = "123456", password_file = "/run/secrets/key" }
headers = { "X-Extra" = "1" }
tenant_id = "team-a"
remote_timeout = "30s"
min_backoff_period = "1s"
max_backoff_period = "1m"
max_backoff_retries = 0
retry_on_http_429 = false

[[write.endpoint]]
url = "http://other"
bearer_token = "s3cr3t"
"#,
    );
    let [a, b, t] = c.write.endpoint.as_slice() else {
        panic!("3 endpoints: {:?}", c.write.endpoint)
    };
    assert_eq!(a, &config::Endpoint::new("http://pyroscope:4040"));
    assert_eq!(a.api, Api::Push);
    assert_eq!(a.remote_timeout, Duration::from_secs(10));
    assert_eq!(a.min_backoff_period, Duration::from_millis(500));
    assert_eq!(a.max_backoff_period, Duration::from_secs(300));
    assert_eq!(a.max_backoff_retries, 10);
    assert!(a.retry_on_http_429);
    assert_eq!(b.name.as_deref(), Some("cloud"));
    assert_eq!(b.api, Api::Ingest);
    let auth = b
        .basic_auth
        .as_ref()
        .unwrap_or_else(|| panic!("basic_auth"));
    assert_eq!(auth.username, "123456");
    assert_eq!(
        auth.password_file.as_deref(),
        Some(Path::new("/run/secrets/key"))
    );
    assert_eq!(b.headers.get("X-Extra").map(String::as_str), Some("1"));
    assert_eq!(b.tenant_id.as_deref(), Some("team-a"));
    assert_eq!(
        (
            b.remote_timeout,
            b.min_backoff_period,
            b.max_backoff_period,
            b.max_backoff_retries,
            b.retry_on_http_429
        ),
        (
            Duration::from_secs(30),
            Duration::from_secs(1),
            Duration::from_secs(60),
            0,
            false
        )
    );
    assert_eq!(t.bearer_token.as_ref().map(|s| s.expose()), Some("s3cr3t"));
    // Secrets stay out of logs.
    assert!(!format!("{c:?}").contains("s3cr3t"));
}

#[test]
fn relabel_rules_in_the_config_behave_as_prometheus() {
    let (c, warnings) = parse(
        r#"
[[discovery.process]]

[[relabel]]
action = "drop"
source_labels = ["__meta_process_exe"]
regex = "/usr/sbin/.*"

[[relabel]]
source_labels = ["__meta_process_exe", "__meta_process_username"]
separator = "@"
regex = ".*/(.*)@(.*)"
replacement = "ebpf/${2}/${1}"
target_label = "service_name"

[[relabel]]
action = "labelmap"
regex = "__meta_process_(uid)"
replacement = "process_$1"

[[relabel]]
action = "hashmod"
source_labels = ["__process_pid__"]
modulus = 1000
target_label = "shard"

[[relabel]]
action = "labeldrop"
regex = "__meta_process_.*"
"#,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.discovery.process.len(), 1);
    assert_eq!(
        c.discovery.process[0].refresh_interval,
        Duration::from_secs(60)
    );
    assert_eq!(c.relabel.len(), 5);
    assert_eq!(c.relabel[1].config().separator, "@");
    assert_eq!(c.relabel[0].config().replacement, "$1");

    let discovered = |pid: &str, exe: &str| -> Labels {
        Labels::from([
            ("__process_pid__", pid),
            ("__meta_process_exe", exe),
            ("__meta_process_username", "www"),
            ("__meta_process_uid", "33"),
        ])
    };
    assert_eq!(
        relabel::relabel(&c.relabel, discovered("10", "/usr/sbin/sshd")),
        None
    );
    // hashmod: the low 8 bytes of md5("11"), big-endian, mod 1000 (computed with Python hashlib).
    let out = relabel::relabel(&c.relabel, discovered("11", "/usr/bin/nginx"))
        .unwrap_or_else(|| panic!("kept"));
    assert_eq!(out.get("service_name"), Some("ebpf/www/nginx"));
    assert_eq!(out.get("process_uid"), Some("33"));
    assert_eq!(out.get("__meta_process_exe"), None);
    assert_eq!(out.get("shard"), Some("986"));
    let targets = build_targets([out]);
    assert_eq!(targets[0].id(), &TargetId::Pid(11));
    assert_eq!(
        targets[0].series_labels("process_cpu").to_string(),
        r#"{__name__="process_cpu", __process_pid__="11", process_uid="33", service_name="ebpf/www/nginx", shard="986"}"#
    );
}

#[test]
fn static_targets_and_other_tables() {
    let (c, warnings) = parse(
        r#"
targets = [{ __process_pid__ = "1", service_name = "init" }]

[external_labels]
cluster = "eu-1"
"host.name" = "a"

[server]
listen_address = "0.0.0.0:9000"

[output]
dir = "/tmp/profiles"
max_bytes = 1000
max_age = "1h30m"
"#,
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        c.targets,
        [Labels::from([
            ("__process_pid__", "1"),
            ("service_name", "init")
        ])]
    );
    assert_eq!(c.external_labels.len(), 2);
    assert_eq!(c.server.listen_address.to_string(), "0.0.0.0:9000");
    assert_eq!(c.output.dir, PathBuf::from("/tmp/profiles"));
    assert_eq!(c.output.max_bytes, 1000);
    assert_eq!(c.output.max_age, Duration::from_secs(5400));

    let (c, _) =
        parse("[[targets]]\n__container_id__ = \"abc\"\n[[targets]]\n__process_pid__ = \"7\"\n");
    assert_eq!(c.targets.len(), 2);
}

#[test]
fn load_reads_a_file_and_reports_its_path() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ferroscope.toml");
    std::fs::write(&path, "[ebpf]\nsample_rate = 97\n[[discovery.process]]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (c, w) = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.ebpf.sample_rate, 97);
    assert!(w.is_empty());
    std::fs::write(&path, "[ebpf]\nsample_rate = 0\n").unwrap_or_else(|e| panic!("{e}"));
    let msg = config::load(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.starts_with(&format!("{}:2:15:", path.display())),
        "{msg}"
    );
    let missing = config::load(&dir.path().join("nope.toml")).expect_err("no such file");
    // The cause is the error's source, not part of its message: printed as a chain, it
    // shows once.
    let cause = std::error::Error::source(&missing).map(|c| c.to_string());
    let missing = missing.to_string();
    assert!(
        missing.contains("cannot read the configuration file") && missing.contains("--config"),
        "{missing}"
    );
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("No such file"))
            && !missing.contains("No such file"),
        "{missing} / cause {cause:?}"
    );
}

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (_, warnings) = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            // The examples for Kubernetes name the node by ${NODE_NAME}, which a DaemonSet
            // sets and this test does not.
            let warnings: Vec<&String> = warnings
                .iter()
                .filter(|w| !w.contains("the environment variable NODE_NAME is not set here"))
                .collect();
            assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
            seen.push(
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    seen.sort();
    for want in ["docker.toml", "kubernetes.toml", "local.toml"] {
        assert!(
            seen.iter().any(|s| s == want),
            "{want} missing from {seen:?}"
        );
    }
}

#[test]
fn container_discoveries_take_alloys_arguments() {
    let (c, warnings) = parse(
        r#"
[[discovery.docker]]
host = "unix:///var/run/docker.sock"
refresh_interval = "15s"
port = 9100
match_first_network = false
[[discovery.docker.filter]]
name = "label"
values = ["app=shop", "tier=web"]

[[discovery.kubernetes]]
role = "pod"
kubeconfig_file = "/etc/kube/config"
namespaces = { names = ["shop", "batch"] }
[[discovery.kubernetes.selectors]]
role = "pod"
field = "spec.nodeName=${PATH_IS_ALWAYS_SET_HERE}"
label = "app=shop"

[[discovery.kubernetes]]
role = "pod"
api_server = "https://10.0.0.1:6443"
bearer_token_file = "/var/run/token"
tls_config = { ca_file = "/etc/ca.crt" }

[[discovery.cri]]
node_name = "node-${PATH_IS_ALWAYS_SET_HERE}"
"#
        .replace("PATH_IS_ALWAYS_SET_HERE", "HOME")
        .as_str(),
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    let home = std::env::var("HOME").unwrap_or_default();
    let d = &c.discovery.docker[0];
    assert_eq!(d.host, "unix:///var/run/docker.sock");
    assert_eq!(d.refresh_interval, Duration::from_secs(15));
    assert_eq!((d.port, d.match_first_network), (9100, false));
    assert_eq!(d.host_networking_host, "localhost");
    assert_eq!(d.filter[0].values, ["app=shop", "tier=web"]);
    let k = &c.discovery.kubernetes[0];
    assert_eq!(
        k.kubeconfig_file.as_deref(),
        Some(Path::new("/etc/kube/config"))
    );
    assert_eq!(k.namespaces.names, ["shop", "batch"]);
    // Kept as written, replaced when the agent starts.
    assert_eq!(
        k.selectors[0].field.as_deref(),
        Some("spec.nodeName=${HOME}")
    );
    assert_eq!(
        config::expand_env(k.selectors[0].field.as_deref().unwrap_or_default()).as_deref(),
        Ok(format!("spec.nodeName={home}").as_str())
    );
    assert_eq!(k.selectors[0].label.as_deref(), Some("app=shop"));
    let k = &c.discovery.kubernetes[1];
    assert_eq!(k.api_server.as_deref(), Some("https://10.0.0.1:6443"));
    assert_eq!(
        k.tls_config.ca_file.as_deref(),
        Some(Path::new("/etc/ca.crt"))
    );
    let cri = &c.discovery.cri[0];
    assert_eq!(cri.refresh_interval, Duration::from_secs(5));
    assert_eq!(
        cri.containerd_state_dirs,
        [PathBuf::from("/run/containerd")]
    );
    assert_eq!(
        cri.crio_storage_dirs,
        [PathBuf::from("/run/containers/storage")]
    );
    assert_eq!(cri.node_name.as_deref(), Some("node-${HOME}"));
    // An unset variable is a warning with its place (the agent needs it when it runs).
    let (_, warnings) = parse(
        "[[discovery.kubernetes]]\nrole = \"pod\"\n[[discovery.kubernetes.selectors]]\nrole = \"pod\"\nfield = \"spec.nodeName=${FERROSCOPE_TEST_UNSET_VARIABLE}\"\n",
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("test.toml:5:24: discovery.kubernetes.selectors.field: the environment variable FERROSCOPE_TEST_UNSET_VARIABLE is not set here"),
        "{warnings:?}"
    );
    // Defaults as in Alloy.
    let (c, _) = parse("[[discovery.docker]]\nhost = \"tcp://10.0.0.2:2375\"\n");
    assert_eq!(
        c.discovery.docker[0].refresh_interval,
        Duration::from_secs(60)
    );
    assert_eq!(c.discovery.docker[0].port, 80);
    assert!(c.discovery.docker[0].match_first_network);
    // A container discovery is enough to profile something: no warning.
    let (_, warnings) = parse("[[discovery.cri]]\n");
    assert!(warnings.is_empty(), "{warnings:?}");
    let (_, warnings) = parse("[ebpf]\nsample_rate = 19\n");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("nothing will be profiled")),
        "{warnings:?}"
    );
}

#[test]
fn a_static_target_may_get_its_id_from_relabelling() {
    // Seed 001: a target must name a process or a container; relabel rules run first.
    let (c, _) = parse(
        r#"
[[targets]]
pid = "42"
service_name = "x"

[[relabel]]
source_labels = ["pid"]
target_label = "__process_pid__"
"#,
    );
    assert_eq!(c.targets.len(), 1);
    // A rule that drops it makes it harmless.
    let (c, _) = parse(
        r#"
[[targets]]
service_name = "x"

[[relabel]]
action = "drop"
source_labels = ["service_name"]
regex = "x"
"#,
    );
    assert_eq!(c.targets.len(), 1);
}

#[test]
fn environment_variables_expand() {
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(
        config::expand_env("a=${HOME},b").as_deref(),
        Ok(format!("a={home},b").as_str())
    );
    assert_eq!(config::expand_env("plain").as_deref(), Ok("plain"));
    assert!(config::expand_env("${}").is_err());
    assert!(config::expand_env("${A-B}").is_err());
    assert!(config::expand_env("${FERROSCOPE_SURELY_UNSET_42}").is_err());
}

#[test]
fn limits_size_the_kernel_maps_and_reject_unusable_values() {
    let (c, _) = parse("");
    let kernel = ferroscope_ebpf_programs::UnwinderConfig::default();
    assert_eq!(c.limits.unwinder(), kernel);
    assert_eq!(c.limits.extract_cpu_share, 0.25);
    // A node running 60,000 processes.
    let (c, _) = parse(
        "[limits]\nprocesses = 60000\nmapping_prefixes = 1000000\ntable_pages = 200000\ntable_entries = 8388608\nextract_cpu_share = 0.1\n",
    );
    let u = c.limits.unwinder();
    assert_eq!(
        (
            u.max_pids,
            u.max_mapping_prefixes,
            u.max_delta_pages,
            u.max_delta_entries
        ),
        (60_000, 1_000_000, 200_000, 8_388_608)
    );
    assert_eq!(c.limits.extract_cpu_share, 0.1);
    for (text, line, key, says) in [
        (
            "[limits]\nprocesses = 0\n",
            2,
            "limits.processes",
            "from 1 to",
        ),
        (
            "\n[limits]\ntable_entries = -5\n",
            3,
            "limits.table_entries",
            "from 1 to",
        ),
        (
            "[limits]\nmapping_prefixes = 4294967296\n",
            2,
            "limits.mapping_prefixes",
            "from 1 to",
        ),
        (
            "[limits]\nextract_cpu_share = 0.0\n",
            2,
            "limits.extract_cpu_share",
            "fraction of one CPU",
        ),
        (
            "[limits]\nthreads = 4\n",
            2,
            "limits.threads",
            "unknown field",
        ),
    ] {
        let (l, k, message) = parse_err(text);
        assert_eq!((l, k.as_str()), (line, key), "{text}: {message}");
        assert!(message.contains(says), "{text}: {message}");
    }
}
