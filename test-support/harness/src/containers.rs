//! Real containers for tests, with no image registry: root filesystems and OCI image
//! tarballs built here from the repository's C fixtures (statically linked, so the program is
//! the whole filesystem), cached outside the clone and keyed by what they are built from; and
//! the runtimes that run them: **podman** with **crun** and its Docker-compatible API
//! (`podman system service`), and **containerd** with **ctr**.
//!
//! Each runtime instance is private to the test: its own storage, state and socket under a
//! temporary directory, removed (containers killed, mounts undone) when the handle drops.
//!
//! On a host with hybrid cgroups whose cgroup-v2 hierarchy has controllers (this lab's VM:
//! `hugetlb` is on v2 only), crun refuses to run ("cgroups in hybrid mode not supported").
//! [`Podman`] then runs the service in a private mount namespace in which the v2 mount
//! (`/sys/fs/cgroup/unified`) is unmounted, so crun sees plain cgroup v1; every podman
//! command joins that namespace (`nsenter --mount`). Nothing changes outside it.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::cache::{provision, unmount_under};
use crate::exec::{exec, minutes};
use crate::process::Guard;
use crate::require::{Unavailable, find_tool, need};

/// The version of the recipes below: bump it to rebuild every cached root filesystem and
/// image.
const RECIPE: u32 = 1;

/// FNV-1a, 64 bits: a stable hash for cache keys.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A root filesystem holding one statically linked program, `/<name>`, compiled from the C
/// file `source` with `gcc -static -O0 -g -fno-omit-frame-pointer`. Cached under
/// `containers/rootfs-<name>-<hash of the source, gcc's version and the recipe>`.
pub fn try_static_rootfs(name: &str, source: &Path) -> Result<PathBuf, Unavailable> {
    let gcc = find_tool("gcc")?;
    let code = std::fs::read(source)
        .map_err(|e| Unavailable(format!("cannot read {}: {e}", source.display())))?;
    let version = exec(Command::new(&gcc).arg("--version"), minutes(1))?;
    let key = format!(
        "containers/rootfs-{name}-{:016x}",
        fnv(&[&code, version.as_bytes(), &RECIPE.to_le_bytes()])
    );
    provision(&key, |tmp| {
        let out = tmp.join(name);
        exec(
            Command::new(&gcc)
                .args(["-static", "-O0", "-g", "-fno-omit-frame-pointer", "-o"])
                .arg(&out)
                .arg(source),
            minutes(5),
        )
        .map_err(|e| {
            Unavailable(format!(
                "{e}\n(a static build needs libc's archive: apt-get install libc6-dev)"
            ))
        })?;
        Ok(())
    })
}

/// [`try_static_rootfs`], or `None` after a skip (a failure when tests are required).
pub fn static_rootfs(name: &str, source: &Path) -> Option<PathBuf> {
    need(try_static_rootfs(name, source))
}

/// An OCI image layout tarball (`oci-layout`, `index.json`, `blobs/sha256/...`) whose one
/// uncompressed layer is the root filesystem `rootfs`, named `reference` (the
/// `io.containerd.image.name` annotation, which `ctr image import` uses), with `entrypoint`.
/// Cached under `containers/image-<hash of the files, reference and recipe>`; returns the
/// tarball.
pub fn try_oci_image(
    rootfs: &Path,
    reference: &str,
    entrypoint: &[&str],
) -> Result<PathBuf, Unavailable> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rootfs)
        .map_err(|e| Unavailable(format!("cannot list {}: {e}", rootfs.display())))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut parts: Vec<Vec<u8>> = vec![
        reference.as_bytes().to_vec(),
        entrypoint.join("\0").into_bytes(),
        RECIPE.to_le_bytes().to_vec(),
    ];
    for f in &files {
        parts.push(
            f.file_name()
                .map(|n| n.as_encoded_bytes().to_vec())
                .unwrap_or_default(),
        );
        parts.push(
            std::fs::read(f)
                .map_err(|e| Unavailable(format!("cannot read {}: {e}", f.display())))?,
        );
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let key = format!("containers/image-{:016x}", fnv(&refs));
    let dir = provision(&key, |tmp| {
        build_oci_image(rootfs, reference, entrypoint, tmp)
    })?;
    Ok(dir.join("image.tar"))
}

/// [`try_oci_image`], or `None` after a skip.
pub fn oci_image(rootfs: &Path, reference: &str, entrypoint: &[&str]) -> Option<PathBuf> {
    need(try_oci_image(rootfs, reference, entrypoint))
}

/// The files of a reproducible tar: sorted, owned by root, dated 0.
fn tar(dir: &Path, out: &Path, members: &[&str]) -> Result<(), Unavailable> {
    let tar = find_tool("tar")?;
    exec(
        Command::new(tar)
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--format=posix",
                "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                "-C",
            ])
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .args(members),
        minutes(2),
    )
    .map(|_| ())
}

fn sha256(path: &Path) -> Result<String, Unavailable> {
    let out = exec(Command::new(find_tool("sha256sum")?).arg(path), minutes(1))?;
    out.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(str::to_owned)
        .ok_or_else(|| Unavailable(format!("sha256sum printed {out:?}")))
}

fn build_oci_image(
    rootfs: &Path,
    reference: &str,
    entrypoint: &[&str],
    tmp: &Path,
) -> Result<(), Unavailable> {
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes)
            .map_err(|e| Unavailable(format!("cannot write {}: {e}", path.display())))
    };
    let layout = tmp.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)
        .map_err(|e| Unavailable(format!("cannot create {}: {e}", blobs.display())))?;
    // The layer: the root filesystem's files.
    let layer = tmp.join("layer.tar");
    let members: Vec<String> = std::fs::read_dir(rootfs)
        .map_err(|e| Unavailable(format!("cannot list {}: {e}", rootfs.display())))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    tar(rootfs, &layer, &members)?;
    let blob = |path: &Path| -> Result<(String, u64), Unavailable> {
        let digest = sha256(path)?;
        let size = std::fs::metadata(path)
            .map_err(|e| Unavailable(format!("{}: {e}", path.display())))?
            .len();
        std::fs::copy(path, blobs.join(&digest))
            .map_err(|e| Unavailable(format!("cannot copy {}: {e}", path.display())))?;
        Ok((digest, size))
    };
    let (layer_digest, layer_size) = blob(&layer)?;
    let entrypoint: Vec<String> = entrypoint.iter().map(|a| format!("{a:?}")).collect();
    let config = tmp.join("config.json");
    write(
        &config,
        format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":[{}]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{layer_digest}"]}}}}"#,
            entrypoint.join(",")
        )
        .as_bytes(),
    )?;
    let (config_digest, config_size) = blob(&config)?;
    let manifest = tmp.join("manifest.json");
    write(
        &manifest,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer_digest}","size":{layer_size}}}]}}"#
        )
        .as_bytes(),
    )?;
    let (manifest_digest, manifest_size) = blob(&manifest)?;
    write(
        &layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":{reference:?},"org.opencontainers.image.ref.name":{reference:?}}}}}]}}"#
        )
        .as_bytes(),
    )?;
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    tar(
        &layout,
        &tmp.join("image.tar"),
        &["blobs", "index.json", "oci-layout"],
    )?;
    for f in [layer, config, manifest] {
        let _ = std::fs::remove_file(f);
    }
    std::fs::remove_dir_all(&layout)
        .map_err(|e| Unavailable(format!("cannot remove {}: {e}", layout.display())))
}

/// A directory for one runtime instance, removed (after unmounting what is under it) on
/// drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch, Unavailable> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ferroscope-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = unmount_under(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `ready` every 50 ms for up to `limit`.
fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ready()
}

/// Whether crun would refuse this host's cgroups: `/sys/fs/cgroup` is not a cgroup2 mount
/// (hybrid or v1) and the v2 hierarchy mounted beside it has controllers.
fn hybrid_with_v2_controllers() -> bool {
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let v2_root = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    !v2_root
        && std::fs::read_to_string(unified)
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false)
}

/// The soft and hard limit of `resource`. Containers get limits no higher than the test's:
/// an OCI runtime may lower but not raise them without CAP_SYS_RESOURCE (not in this lab's
/// bounding set), and podman asks for more than the host default.
fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return (1024, 1024);
    }
    (r.rlim_cur, r.rlim_max)
}

/// A container a runtime started: its ID and its first process's PID (on the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The full 64-digit ID.
    pub id: String,
    /// The PID of its process, in the host's PID namespace.
    pub pid: u32,
}

/// A private podman (crun, cgroupfs) with its Docker-compatible API service.
#[derive(Debug)]
pub struct Podman {
    podman: PathBuf,
    nsenter: PathBuf,
    /// The global options: `--root`, `--runroot`, `--runtime crun`, ...
    options: Vec<String>,
    socket: PathBuf,
    service: Option<Guard>,
    root: PathBuf,
    scratch: Scratch,
}

impl Podman {
    /// Starts the service; `Err` says what is missing.
    pub fn try_start() -> Result<Podman, Unavailable> {
        if !crate::is_root() {
            return Err(Unavailable("running containers needs root".to_owned()));
        }
        let podman = find_tool("podman")?;
        let crun = find_tool("crun")?;
        let nsenter = find_tool("nsenter")?;
        let unshare = find_tool("unshare")?;
        let scratch = Scratch::new("podman")?;
        let d = &scratch.0;
        let root = d.join("root");
        let socket = d.join("podman.sock");
        let options: Vec<String> = vec![
            "--root".into(),
            root.display().to_string(),
            "--runroot".into(),
            d.join("runroot").display().to_string(),
            "--tmpdir".into(),
            d.join("tmp").display().to_string(),
            "--runtime".into(),
            crun.display().to_string(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
        ];
        let mut script = String::new();
        if hybrid_with_v2_controllers() {
            script.push_str("umount /sys/fs/cgroup/unified && ");
        }
        script.push_str("exec \"$0\" \"$@\"");
        let mut cmd = Command::new(unshare);
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(&podman)
            .args(&options)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()));
        let service = Guard::spawn(&mut cmd, Duration::from_secs(3600));
        let mut me = Podman {
            podman,
            nsenter,
            options,
            socket,
            service: Some(service),
            root,
            scratch,
        };
        if !wait_until(Duration::from_secs(30), || me.ping()) {
            let tail = me
                .service
                .as_ref()
                .map(Guard::stderr_tail)
                .unwrap_or_default();
            return Err(Unavailable(format!(
                "podman system service did not answer on {} within 30 s:\n{tail}",
                me.socket.display()
            )));
        }
        Ok(me)
    }

    /// [`Podman::try_start`], or `None` after a skip.
    pub fn start() -> Option<Podman> {
        need(Self::try_start())
    }

    fn ping(&mut self) -> bool {
        use std::io::{Read, Write};
        if self.service.as_mut().is_some_and(|s| !s.running()) {
            return false;
        }
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
    }

    /// The Docker-compatible API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its graph root (containers/storage, as CRI-O lays it out:
    /// `<root>/overlay-containers/<id>/userdata/config.json`).
    pub fn storage_root(&self) -> &Path {
        &self.root
    }

    /// A podman command in the service's mount namespace.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.nsenter);
        let pid = self.service.as_ref().map_or(0, Guard::pid);
        cmd.arg(format!("--target={pid}"))
            .arg("--mount")
            .arg(&self.podman)
            .args(&self.options);
        cmd
    }

    /// `podman run -d --network none` of `args` in a copy of `rootfs` (podman adds mount
    /// points to the directory it runs from; the cached one stays as built), named `name`,
    /// with Docker labels and OCI annotations.
    pub fn try_run(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        rootfs: &Path,
        args: &[&str],
    ) -> Result<Container, Unavailable> {
        // Limits no higher than the test's own (podman's defaults are higher).
        let nofile = rlimit(libc::RLIMIT_NOFILE).0.min(1024);
        let nproc = rlimit(libc::RLIMIT_NPROC).0.min(4096);
        let mut cmd = self.command();
        cmd.args(["run", "-d", "--network", "none", "--name", name])
            .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
            .arg(format!("--ulimit=nproc={nproc}:{nproc}"));
        for (k, v) in labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        for (k, v) in annotations {
            cmd.arg("--annotation").arg(format!("{k}={v}"));
        }
        static COPIES: AtomicU32 = AtomicU32::new(0);
        let copy = self.scratch.0.join(format!(
            "rootfs-{name}-{}",
            COPIES.fetch_add(1, Ordering::Relaxed)
        ));
        exec(
            Command::new(find_tool("cp")?)
                .arg("-a")
                .arg(rootfs)
                .arg(&copy),
            minutes(1),
        )?;
        cmd.arg("--rootfs").arg(&copy).args(args);
        let id = exec(&mut cmd, minutes(2))?.trim().to_owned();
        if id.len() != 64 {
            return Err(Unavailable(format!("podman run printed {id:?}, not an ID")));
        }
        let pid = exec(
            self.command()
                .args(["inspect", "--format", "{{.State.Pid}}"])
                .arg(&id),
            minutes(1),
        )?;
        let pid = pid
            .trim()
            .parse()
            .map_err(|_| Unavailable(format!("podman inspect printed PID {pid:?}")))?;
        Ok(Container { id, pid })
    }

    /// [`Podman::try_run`]; fails the test when the container does not start.
    pub fn run(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        rootfs: &Path,
        args: &[&str],
    ) -> Container {
        self.try_run(name, labels, annotations, rootfs, args)
            .unwrap_or_else(|e| panic!("podman cannot run the container {name}: {e}"))
    }

    /// Stops and removes a container now (`podman rm -f -t 0`).
    pub fn remove(&self, name_or_id: &str) {
        if let Err(e) = exec(
            self.command().args(["rm", "-f", "-t", "0", name_or_id]),
            minutes(1),
        ) {
            panic!("podman cannot remove {name_or_id}: {e}");
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if self.service.is_some() {
            let _ = exec(
                self.command().args(["rm", "-a", "-f", "-t", "0"]),
                minutes(1),
            );
        }
        if let Some(mut s) = self.service.take() {
            s.signal(libc::SIGTERM);
            let _ = s.wait(Duration::from_secs(10));
        }
        let _ = &self.scratch;
    }
}

/// A private containerd (its own root, state and socket; the CRI plug-in off) driven with
/// `ctr` in namespace `k8s.io`, kubelet's.
#[derive(Debug)]
pub struct Containerd {
    ctr: PathBuf,
    address: PathBuf,
    state: PathBuf,
    daemon: Option<Guard>,
    running: std::sync::Mutex<Vec<String>>,
    scratch: Scratch,
}

impl Containerd {
    /// Starts the daemon; `Err` says what is missing.
    pub fn try_start() -> Result<Containerd, Unavailable> {
        if !crate::is_root() {
            return Err(Unavailable("running containers needs root".to_owned()));
        }
        let containerd = find_tool("containerd")?;
        let ctr = find_tool("ctr")?;
        find_tool("runc")?;
        let scratch = Scratch::new("containerd")?;
        let d = &scratch.0;
        let address = d.join("containerd.sock");
        let state = d.join("state");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n[debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
                d.join("root").display().to_string(),
                state.display().to_string(),
                address.display().to_string(),
                format!("{}.ttrpc", address.display()),
            ),
        )
        .map_err(|e| Unavailable(format!("cannot write {}: {e}", config.display())))?;
        let daemon = Guard::spawn(
            Command::new(containerd).arg("--config").arg(&config),
            Duration::from_secs(3600),
        );
        let me = Containerd {
            ctr,
            address,
            state,
            daemon: Some(daemon),
            running: std::sync::Mutex::new(Vec::new()),
            scratch,
        };
        if !wait_until(Duration::from_secs(30), || {
            me.ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        }) {
            let tail = me
                .daemon
                .as_ref()
                .map(Guard::stderr_tail)
                .unwrap_or_default();
            return Err(Unavailable(format!(
                "containerd did not answer on {} within 30 s:\n{tail}",
                me.address.display()
            )));
        }
        Ok(me)
    }

    /// [`Containerd::try_start`], or `None` after a skip.
    pub fn start() -> Option<Containerd> {
        need(Self::try_start())
    }

    /// A `ctr` command for this daemon, namespace `k8s.io`.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(&self.address)
            .args(["--namespace", "k8s.io"]);
        cmd
    }

    /// Its state directory (what `[[discovery.cri]] containerd_state_dirs` names; tasks are
    /// under `io.containerd.runtime.v2.task/k8s.io/<id>/`).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// `ctr image import` of an image tarball.
    pub fn import(&self, image_tar: &Path) {
        if let Err(e) = exec(
            self.ctr().args(["image", "import"]).arg(image_tar),
            minutes(2),
        ) {
            panic!("ctr cannot import {}: {e}", image_tar.display());
        }
    }

    /// `ctr run -d` of `image` as container `id` with OCI annotations (kubelet's CRI
    /// annotations, for a Pod container) and `args`.
    pub fn run(
        &self,
        id: &str,
        image: &str,
        annotations: &[(&str, &str)],
        args: &[&str],
    ) -> Container {
        let mut cmd = self.ctr();
        cmd.args(["run", "-d"]);
        for (k, v) in annotations {
            cmd.arg("--annotation").arg(format!("{k}={v}"));
        }
        cmd.arg(image).arg(id).args(args);
        if let Err(e) = exec(&mut cmd, minutes(2)) {
            panic!("ctr cannot run {id}: {e}");
        }
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.to_owned());
        let pid_file = self
            .state
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(id)
            .join("init.pid");
        let mut pid = None;
        wait_until(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok());
            pid.is_some()
        });
        let pid = pid.unwrap_or_else(|| panic!("{} was not written", pid_file.display()));
        Container {
            id: id.to_owned(),
            pid,
        }
    }

    /// Kills a container's task and removes it.
    pub fn remove(&self, id: &str) {
        let _ = exec(
            self.ctr().args(["task", "kill", "-s", "SIGKILL", id]),
            minutes(1),
        );
        wait_until(Duration::from_secs(10), || {
            exec(self.ctr().args(["task", "delete", id]), minutes(1)).is_ok()
        });
        let _ = exec(self.ctr().args(["container", "rm", id]), minutes(1));
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| r != id);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ids = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for id in ids {
            self.remove(&id);
        }
        if let Some(mut d) = self.daemon.take() {
            d.signal(libc::SIGTERM);
            let _ = d.wait(Duration::from_secs(10));
        }
        let _ = &self.scratch;
    }
}

/// A random 64-digit hex ID, as kubelet's runtimes make them.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
