//! The OCI runtime spec of a worker container, translated from the docker
//! runtime's create request (the one place the hardening is decided,
//! `esb-runtimes-docker`'s `container.rs`): the same entrypoint,
//! environment, user, working directory, bind mounts, tmpfs `/tmp`,
//! read-only root, no capabilities, `no_new_privs`, memory (no swap) and
//! pids limits, plus what dockerd adds on its own: an `/etc/hosts` with the
//! service aliases, the instance network's namespace, a seccomp filter
//! refusing the calls that open new namespaces or kernel attack surface.
//!
//! Owns: the request → spec mapping. Must not: talk to containerd.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;
use oci_spec::runtime::{
    Arch, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder, Mount, MountBuilder, Spec, UserBuilder,
};

use crate::ContainerdError;

/// What the image contributes to the spec.
#[derive(Debug, Clone, Default)]
pub struct ImageDefaults {
    /// `Env` of the image config.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User` (numeric `uid[:gid]` only).
    pub user: Option<String>,
}

/// Per-container host paths the spec refers to.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// The container's network namespace (`/run/netns/...`); `None` keeps
    /// a private namespace with only loopback.
    pub netns: Option<PathBuf>,
    /// The `/etc/hosts` file written for it.
    pub hosts_file: Option<PathBuf>,
}

/// System calls a worker never needs that widen the kernel surface or open
/// new namespaces (user namespaces would give a process without
/// capabilities new ones there). They fail with `EPERM`; everything else is
/// allowed (dockerd's profile is an allow-list of ~350 calls; this is the
/// part of it that matters once every capability is dropped).
const DENIED_SYSCALLS: &[&str] = &[
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "fsopen",
    "fsmount",
    "fsconfig",
    "move_mount",
    "open_tree",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "lookup_dcookie",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "syslog",
    "vhangup",
];

const CLONE_NEWUSER: u64 = 0x1000_0000;

fn invalid(what: impl std::fmt::Display) -> ContainerdError {
    ContainerdError::Spec(what.to_string())
}

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount, ContainerdError> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ.to_string())
        .source(source.to_path_buf())
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(invalid)
}

/// `host:container[:ro]` → a read-only (or read-write) bind mount.
fn bind(spec: &str) -> Result<Mount, ContainerdError> {
    let mut parts = spec.splitn(3, ':');
    let (Some(host), Some(dest)) = (parts.next(), parts.next()) else {
        return Err(invalid(format!("bind {spec:?}: expected host:container")));
    };
    let ro = parts
        .next()
        .is_some_and(|o| o.split(',').any(|o| o == "ro"));
    let options: &[&str] = if ro {
        &["rbind", "ro", "nosuid", "nodev"]
    } else {
        &["rbind", "rw", "nosuid", "nodev"]
    };
    mount(dest, "bind", Path::new(host), options)
}

fn user(text: &str) -> Result<(u32, u32), ContainerdError> {
    let (uid, gid) = text.split_once(':').unwrap_or((text, text));
    match (uid.parse(), gid.parse()) {
        (Ok(uid), Ok(gid)) => Ok((uid, gid)),
        _ => Err(invalid(format!(
            "user {text:?}: the containerd engine needs a numeric uid[:gid]"
        ))),
    }
}

/// The spec of a worker container.
pub fn worker_spec(
    id: &str,
    body: &ContainerCreateBody,
    image: &ImageDefaults,
    paths: &HostPaths,
) -> Result<Spec, ContainerdError> {
    let host = body.host_config.clone().unwrap_or_default();
    let mut spec = Spec::default();
    spec.set_hostname(Some(id.chars().take(63).collect()));

    // The process: the request's entrypoint/cmd override the image's, as
    // with docker.
    let entrypoint = body
        .entrypoint
        .clone()
        .unwrap_or_else(|| image.entrypoint.clone());
    let cmd = match (&body.entrypoint, &body.cmd) {
        (_, Some(cmd)) => cmd.clone(),
        (Some(_), None) => Vec::new(),
        (None, None) => image.cmd.clone(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(invalid("no entrypoint or command"));
    }
    let mut env = image.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
    }
    for var in body.env.clone().unwrap_or_default() {
        let key = var.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(var);
    }
    let (uid, gid) = match body.user.as_deref().or(image.user.as_deref()) {
        Some(u) if !u.is_empty() => user(u)?,
        _ => (0, 0),
    };
    let no_new_privileges = host
        .security_opt
        .as_ref()
        .is_some_and(|o| o.iter().any(|o| o.starts_with("no-new-privileges")));
    let drop_all = host
        .cap_drop
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.eq_ignore_ascii_case("ALL")));
    let process = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| invalid("no process"))?;
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_terminal(Some(false));
    process.set_cwd(PathBuf::from(
        body.working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or_else(|| image.working_dir.clone())
            .unwrap_or_else(|| "/".to_string()),
    ));
    process.set_user(
        UserBuilder::default()
            .uid(uid)
            .gid(gid)
            .build()
            .map_err(invalid)?,
    );
    process.set_no_new_privileges(Some(no_new_privileges));
    if drop_all {
        let none = HashSet::new();
        process.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(none.clone())
                .effective(none.clone())
                .inheritable(none.clone())
                .permitted(none.clone())
                .ambient(none)
                .build()
                .map_err(invalid)?,
        ));
    }

    // The root file system: the snapshot's mounts are handed to the task;
    // `rootfs` is the bundle's path for them.
    if let Some(root) = spec.root_mut().as_mut() {
        root.set_path(PathBuf::from("rootfs"));
        root.set_readonly(Some(host.readonly_rootfs.unwrap_or(false)));
    }

    // Mounts: the defaults (proc, dev, devpts, shm, mqueue, sysfs, cgroup
    // read-only), then tmpfs and binds as requested.
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for m in &mut mounts {
        if m.destination() == Path::new("/sys/fs/cgroup") || m.destination() == Path::new("/sys") {
            let mut options = m.options().clone().unwrap_or_default();
            options.retain(|o| o != "rw");
            if !options.iter().any(|o| o == "ro") {
                options.push("ro".to_string());
            }
            m.set_options(Some(options));
        }
    }
    for (dest, options) in host.tmpfs.clone().unwrap_or_default() {
        let options: Vec<&str> = options.split(',').filter(|o| !o.is_empty()).collect();
        mounts.push(mount(&dest, "tmpfs", Path::new("tmpfs"), &options)?);
    }
    for b in host.binds.clone().unwrap_or_default() {
        mounts.push(bind(&b)?);
    }
    if let Some(hosts) = &paths.hosts_file {
        mounts.push(mount(
            "/etc/hosts",
            "bind",
            hosts,
            &["rbind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    spec.set_mounts(Some(mounts));

    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| invalid("no linux section"))?;
    // One cgroup per container at the hierarchy's root, as dockerd's
    // cgroupfs driver does: under CPU contention each worker then weighs
    // as much as any other process group, instead of all workers sharing
    // one group's weight (measured: 30x warm latency under load).
    linux.set_cgroups_path(Some(PathBuf::from(format!("/{id}"))));
    if let Some(netns) = &paths.netns
        && let Some(namespaces) = linux.namespaces_mut().as_mut()
    {
        for ns in namespaces.iter_mut() {
            if ns.typ() == LinuxNamespaceType::Network {
                ns.set_path(Some(netns.clone()));
            }
        }
    }
    let resources = linux.resources_mut().get_or_insert_with(Default::default);
    if let Some(memory) = host.memory.filter(|m| *m > 0) {
        resources.set_memory(Some(
            LinuxMemoryBuilder::default()
                .limit(memory)
                .swap(host.memory_swap.unwrap_or(memory).max(memory))
                .build()
                .map_err(invalid)?,
        ));
    }
    // The docker runtime's CPU weight (`CpuShares`, two processes' worth:
    // the supervisor and the runtime); without it each worker weighed one
    // process and its runtime waited up to 600 ms for a CPU at c8.
    if let Some(shares) = host.cpu_shares.filter(|s| *s > 0) {
        resources.set_cpu(Some(
            LinuxCpuBuilder::default()
                .shares(shares.unsigned_abs())
                .build()
                .map_err(invalid)?,
        ));
    }
    if let Some(pids) = host.pids_limit.filter(|p| *p > 0) {
        resources.set_pids(Some(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(invalid)?,
        ));
    }
    let denied = LinuxSyscallBuilder::default()
        .names(
            DENIED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(1u32)
        .build()
        .map_err(invalid)?;
    // clone3 cannot be filtered by its flags (they are behind a pointer):
    // ENOSYS makes the C library fall back to clone, as under dockerd.
    let clone3 = LinuxSyscallBuilder::default()
        .names(vec!["clone3".to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(38u32)
        .build()
        .map_err(invalid)?;
    // clone with CLONE_NEWUSER: a new user namespace.
    let clone_newuser = LinuxSyscallBuilder::default()
        .names(vec!["clone".to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(1u32)
        .args(vec![
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(CLONE_NEWUSER)
                .value_two(CLONE_NEWUSER)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
                .map_err(invalid)?,
        ])
        .build()
        .map_err(invalid)?;
    linux.set_seccomp(Some(
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .architectures(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32,
            ])
            .syscalls(vec![denied, clone3, clone_newuser])
            .build()
            .map_err(invalid)?,
    ));
    Ok(spec)
}

/// The `/etc/hosts` of a container: loopback, its own name, and the
/// request's extra hosts (`name:address`).
pub fn hosts_file(id: &str, extra_hosts: &[String]) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
    let short: String = id.chars().take(63).collect();
    text.push_str(&format!("127.0.1.1\t{short}\n"));
    for entry in extra_hosts {
        if let Some((name, addr)) = entry.split_once(':') {
            text.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    text
}

/// The labels a spec's container carries (the request's).
pub fn labels(body: &ContainerCreateBody) -> HashMap<String, String> {
    body.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::HostConfig;

    fn body() -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some("esb/python3.11:latest".to_string()),
            entrypoint: Some(vec![
                "/esb/esb".to_string(),
                "container-supervisor".to_string(),
            ]),
            cmd: Some(Vec::new()),
            env: Some(vec!["ESB_SUPERVISOR_CONFIG={}".to_string()]),
            user: Some("993:990".to_string()),
            working_dir: Some("/var/task".to_string()),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    "/work/esb:/esb/esb:ro".to_string(),
                    "/code:/var/task:ro".to_string(),
                ]),
                memory: Some(128 << 20),
                memory_swap: Some(128 << 20),
                pids_limit: Some(256),
                cpu_shares: Some(2048),
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                cap_drop: Some(vec!["ALL".to_string()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "rw,exec,nosuid,nodev,size=512m,mode=1777".to_string(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_spec_carries_the_docker_hardening() {
        let image = ImageDefaults {
            env: vec!["PATH=/usr/bin".to_string(), "LANG=C.UTF-8".to_string()],
            ..Default::default()
        };
        let paths = HostPaths {
            netns: Some(PathBuf::from("/run/netns/esb-x")),
            hosts_file: Some(PathBuf::from("/run/esb/hosts")),
        };
        let spec = worker_spec("esb-x", &body(), &image, &paths).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["terminal"], false);
        assert_eq!(json["process"]["user"]["uid"], 993);
        assert_eq!(json["process"]["user"]["gid"], 990);
        assert_eq!(json["process"]["cwd"], "/var/task");
        assert_eq!(
            json["process"]["args"],
            serde_json::json!(["/esb/esb", "container-supervisor"])
        );
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            assert_eq!(
                json["process"]["capabilities"][set],
                serde_json::json!([]),
                "{set}"
            );
        }
        let env = json["process"]["env"].as_array().unwrap();
        assert!(env.contains(&serde_json::json!("LANG=C.UTF-8")));
        assert!(env.contains(&serde_json::json!("ESB_SUPERVISOR_CONFIG={}")));
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 128 << 20);
        assert_eq!(json["linux"]["resources"]["memory"]["swap"], 128 << 20);
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 256);
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 2048);
        let mounts = json["mounts"].as_array().unwrap();
        let find = |dest: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == dest)
                .unwrap_or_else(|| panic!("no {dest} mount"))
                .clone()
        };
        assert_eq!(find("/tmp")["type"], "tmpfs");
        assert!(
            find("/tmp")["options"]
                .as_array()
                .unwrap()
                .contains(&"size=512m".into())
        );
        assert!(
            find("/var/task")["options"]
                .as_array()
                .unwrap()
                .contains(&"ro".into())
        );
        assert!(
            find("/esb/esb")["options"]
                .as_array()
                .unwrap()
                .contains(&"ro".into())
        );
        assert_eq!(find("/etc/hosts")["source"], "/run/esb/hosts");
        assert!(
            find("/sys")["options"]
                .as_array()
                .unwrap()
                .contains(&"ro".into())
        );
        let netns = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()
            .clone();
        assert_eq!(netns["path"], "/run/netns/esb-x");
        let denied = json["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .unwrap();
        assert!(denied.contains(&"unshare".into()));
        assert!(denied.contains(&"setns".into()));
    }

    #[test]
    fn user_names_are_refused_and_missing_commands_too() {
        let mut b = body();
        b.user = Some("sbx_user1051".to_string());
        let paths = HostPaths {
            netns: None,
            hosts_file: None,
        };
        assert!(worker_spec("x", &b, &ImageDefaults::default(), &paths).is_err());
        let b = ContainerCreateBody::default();
        assert!(worker_spec("x", &b, &ImageDefaults::default(), &paths).is_err());
    }

    #[test]
    fn hosts_file_names_the_service_aliases() {
        let text = hosts_file("c1", &["s3-storage:10.99.0.1".to_string()]);
        assert!(text.contains("10.99.0.1\ts3-storage\n"));
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
    }
}
