//! `cargo xtask vm [--env K=V]... [--timeout MIN] -- CMD ARGS...`: runs a command as
//! root in a small virtual machine booted from Debian's own kernel, for what the host's
//! kernel cannot do (project quotas: CONFIG_XFS_QUOTA, CONFIG_QFMT_V2).
//!
//! qemu runs it with KVM where the CPU has hardware virtualization (vmx or svm), else
//! with its emulator (TCG: a trivial command takes ~5 s, boot included);
//! `XTASK_VM_ACCEL=kvm|tcg` overrides the choice.
//!
//! The VM's root is the host's root filesystem, read-only over virtio-9p, so binaries
//! built on the host (`target/debug/deps/...`) run unchanged; `/tmp`, `/var/tmp` and
//! `/run` are fresh tmpfs's, and `target/vm/out` is shared writable (at `/run/vm-out` and
//! at its host path). The command runs under bash in the workspace root with a clean
//! environment plus the `--env` pairs; its output goes to the console (streamed here,
//! kept in `target/vm/console.log`) and to `target/vm/out/output.log`.
//!
//! - `xtask/vm/fetch-kernel.sh` downloads (never installs) the kernel package
//!   `linux-image-amd64` depends on into `target/vm/kernel`.
//! - The initramfs (`target/vm/initramfs.cpio.gz`: busybox-static, `xtask/vm/init`, the
//!   modules of [`MODULES`] with their dependencies) is rebuilt when init, the module
//!   list or the kernel changed.
//! - xtask writes the command as `target/vm/out/command.sh`; init runs it and writes its
//!   exit code to `target/vm/out/rc`, or its own failure to `init-error`, then powers
//!   off.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Result, XtaskError};

const USAGE: &str = "usage: cargo xtask vm [--env K=V]... [--timeout MINUTES] -- CMD ARGS...";

/// How long [`run_in_vm`] lets the VM run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// What init loads before the chroot (the host's modules are another kernel's, so
/// nothing can be loaded later), dependencies resolved on the host: the virtio-9p
/// shares, then what the tests mount.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "loop",
    "xfs",
    "ext4",
    "quota_v2",
    "quota_tree",
];

/// The VM's memory (MiB) and CPUs.
const MEMORY_MIB: u32 = 4096;
const CPUS: u32 = 2;

/// The busybox the initramfs is made of (Debian's busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// `cargo xtask vm`: runs the command in the VM; the exit code is the command's.
pub fn run(args: &[String]) -> Result<u8> {
    let usage = |problem| XtaskError::Usage {
        command: "vm",
        problem,
    };
    let mut env = Vec::new();
    let mut timeout = DEFAULT_TIMEOUT;
    let mut it = args.iter();
    let mut command = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--env" => {
                let kv = it.next().ok_or(usage("--env needs K=V"))?;
                let (k, v) = kv.split_once('=').ok_or(usage("--env needs K=V"))?;
                if !is_name(k) {
                    return Err(usage("--env K=V: K must be a shell variable name"));
                }
                env.push((k.to_string(), v.to_string()));
            }
            "--timeout" => {
                let min: u64 = it
                    .next()
                    .and_then(|m| m.parse().ok())
                    .filter(|&m| m > 0)
                    .ok_or(usage("--timeout needs a number of minutes"))?;
                timeout = Duration::from_secs(min * 60);
            }
            "--" => {
                command.extend(it.by_ref().cloned());
                break;
            }
            s if s.starts_with('-') => return Err(usage(USAGE)),
            _ => {
                command.push(a.clone());
                command.extend(it.by_ref().cloned());
                break;
            }
        }
    }
    if command.is_empty() {
        return Err(usage(USAGE));
    }
    let code = run_in_vm_for(&command, &env, timeout)?;
    // A shell's exit codes are 0..=255; anything else is a failure all the same.
    Ok(u8::try_from(code).unwrap_or(1))
}

/// Runs `command` (as root, cwd the workspace root, environment `env` on top of a clean
/// one) in the VM with the [`DEFAULT_TIMEOUT`]; returns its exit code.
#[allow(dead_code, reason = "the entry point of the phases that run in the VM")]
pub fn run_in_vm(command: &[String], env: &[(String, String)]) -> Result<i32> {
    run_in_vm_for(command, env, DEFAULT_TIMEOUT)
}

/// [`run_in_vm`] with a time limit: past `timeout` the VM is killed and this fails.
pub fn run_in_vm_for(
    command: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<i32> {
    util::require_root("vm")?;
    util::catch_signals();
    let accel = accel()?;
    util::require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    util::require_tool("busybox", "busybox-static")?;
    util::require_tool("modprobe", "kmod")?;
    util::require_tool("depmod", "kmod")?;
    require_static(Path::new(BUSYBOX))?;

    let dir = vm_dir();
    mkdir(&dir)?;
    // One VM at a time: they share target/vm/out. Held until this returns.
    let lock_path = dir.join("lock");
    let lock = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| XtaskError::VmBusy { lock: lock_path })?;
    let kernel = fetch_kernel(&dir.join("kernel"))?;
    let initramfs = build_initramfs(&dir, &kernel)?;
    let boot_image = boot_kernel(&dir, &kernel)?;

    let out = dir.join("out");
    if out.exists() {
        fs::remove_dir_all(&out).map_err(io_err("remove", &out))?;
    }
    fs::create_dir_all(&out).map_err(io_err("mkdir", &out))?;
    let script = out.join("command.sh");
    fs::write(
        &script,
        command_script(&util::workspace_root(), command, env),
    )
    .map_err(io_err("write", &script))?;

    let log = dir.join("console.log");
    util::header(&format!(
        "vm: {} ({} MiB, {CPUS} CPUs, {}; console in {})",
        kernel.package,
        MEMORY_MIB,
        accel.describe(),
        log.display()
    ));
    let started = Instant::now();
    let status = boot(
        &mut qemu(&accel, &boot_image, &initramfs, &out, &log),
        timeout,
        &log,
    )?;
    println!("vm: qemu ran {:.1} s", started.elapsed().as_secs_f64());

    if let Ok(message) = fs::read_to_string(out.join("init-error")) {
        return Err(XtaskError::VmInit {
            message: message.trim().to_string(),
            log,
        });
    }
    let rc = out.join("rc");
    match fs::read_to_string(&rc) {
        Ok(s) => s.trim().parse().map_err(|_| XtaskError::Io {
            what: "parse the exit code in",
            path: rc.clone(),
            source: std::io::Error::other(format!("{s:?} is not a number")),
        }),
        Err(_) => Err(XtaskError::VmDied { status, rc, log }),
    }
}

/// How qemu runs the VM's CPUs.
enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// qemu's emulator (TCG), several times slower; the reason it is used.
    Tcg(&'static str),
}

impl Accel {
    fn describe(&self) -> String {
        match self {
            Accel::Kvm => "KVM".into(),
            Accel::Tcg(why) => format!("emulated CPUs (TCG), slower: {why}"),
        }
    }
}

/// KVM when the CPU has hardware virtualization (the vmx or svm flag: what kvm_intel and
/// kvm_amd need), else TCG; `XTASK_VM_ACCEL=kvm|tcg` chooses. A CPU without either flag
/// can still have a /dev/kvm (a VM whose hypervisor offers a paravirtual KVM, such as
/// kvm_pvm), which does not run a stock kernel: it stops with emulation failures.
fn accel() -> Result<Accel> {
    let kvm = || {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(|_| Accel::Kvm)
            .map_err(XtaskError::NoKvm)
    };
    match std::env::var("XTASK_VM_ACCEL").as_deref() {
        Ok("kvm") => return kvm(),
        Ok("tcg") => return Ok(Accel::Tcg("XTASK_VM_ACCEL=tcg")),
        _ => {}
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hardware {
        kvm()
    } else {
        Ok(Accel::Tcg(
            "the CPU has no vmx or svm flag (a VM without nested virtualization)",
        ))
    }
}

/// `target/vm`.
pub fn vm_dir() -> PathBuf {
    util::workspace_root().join("target").join("vm")
}

/// The fetched kernel: package line and paths.
struct Kernel {
    /// `linux-image-VER VERSION`, from `DEST/version`.
    package: String,
    /// The kernel release, e.g. `6.1.0-57-amd64`.
    release: String,
    /// The extracted package (`DEST/x`).
    root: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

/// The kernel qemu boots: `dir/vmlinux`, the ELF inside the bzImage, which qemu starts
/// at its PVH entry, skipping the BIOS's real-mode boot and the in-guest decompression
/// (seconds under TCG); the bzImage itself when the kernel has no CONFIG_PVH or its
/// payload is not xz.
fn boot_kernel(dir: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let vmlinuz = kernel.vmlinuz();
    let vmlinux = dir.join("vmlinux");
    let stamp = dir.join("vmlinux.stamp");
    if vmlinux.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == kernel.package) {
        return Ok(vmlinux);
    }
    let config = kernel
        .root
        .join("boot")
        .join(format!("config-{}", kernel.release));
    let config = fs::read_to_string(&config).map_err(io_err("read", &config))?;
    let image = fs::read(&vmlinuz).map_err(io_err("read", &vmlinuz))?;
    let Some(payload) = bzimage_payload(&image).filter(|p| p.starts_with(b"\xfd7zXZ\0")) else {
        return Ok(vmlinuz);
    };
    if !config.lines().any(|l| l == "CONFIG_PVH=y") {
        return Ok(vmlinuz);
    }
    util::require_tool("xz", "xz-utils")?;
    let _ = fs::remove_file(&stamp);
    // The payload ends with the decompressed size, which --single-stream ignores.
    pipe(
        Command::new("xz").args(["-dc", "--single-stream"]),
        payload,
        &vmlinux,
    )?;
    fs::write(&stamp, &kernel.package).map_err(io_err("write", &stamp))?;
    Ok(vmlinux)
}

/// The compressed kernel inside a bzImage (boot protocol 2.08+: `payload_offset` and
/// `payload_length` of the setup header, after the `setup_sects` real-mode sectors).
fn bzimage_payload(image: &[u8]) -> Option<&[u8]> {
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return None;
    }
    let version = u16::from_le_bytes(image.get(0x206..0x208)?.try_into().ok()?);
    if version < 0x208 {
        return None;
    }
    let setup_sects = match image.get(0x1f1)? {
        0 => 4,
        n => *n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)? as usize;
    image.get(start..start + u32_at(0x24c)? as usize)
}

/// Runs `xtask/vm/fetch-kernel.sh dest` (it returns at once when `dest` is complete).
fn fetch_kernel(dest: &Path) -> Result<Kernel> {
    let script = util::workspace_root().join("xtask/vm/fetch-kernel.sh");
    let status = util::run_interruptible(Command::new("bash").arg(&script).arg(dest))?;
    if !status.success() {
        return Err(XtaskError::Script { script, status });
    }
    let version = dest.join("version");
    let package = fs::read_to_string(&version).map_err(io_err("read", &version))?;
    let package = package.trim().to_string();
    let release = package
        .split_whitespace()
        .next()
        .and_then(|p| p.strip_prefix("linux-image-"))
        .ok_or_else(|| XtaskError::Io {
            what: "read the kernel package (linux-image-VER VERSION) in",
            path: version.clone(),
            source: std::io::Error::other(format!(
                "{package:?}: delete the directory to fetch again"
            )),
        })?
        .to_string();
    Ok(Kernel {
        package,
        release,
        root: dest.join("x"),
    })
}

/// Builds `dir/initramfs.cpio.gz` unless `dir/initramfs.stamp` says it is of this init,
/// module list, busybox and kernel.
fn build_initramfs(dir: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let image = dir.join("initramfs.cpio.gz");
    let init_path = util::workspace_root().join("xtask/vm/init");
    let init = fs::read_to_string(&init_path).map_err(io_err("read", &init_path))?;
    let busybox = fs::metadata(BUSYBOX).map_err(io_err("stat", Path::new(BUSYBOX)))?;
    let stamp_path = dir.join("initramfs.stamp");
    let stamp = format!(
        "{}\n{MODULES:?}\nbusybox {} bytes, modified {:?}\n{init}",
        kernel.package,
        busybox.len(),
        busybox.modified().ok()
    );
    if image.exists() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(image);
    }
    util::header("vm: initramfs");
    let _ = fs::remove_file(&stamp_path);
    let staging = dir.join("initramfs");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err("remove", &staging))?;
    }
    for d in ["bin", "dev", "proc", "sys", "host"] {
        mkdir(&staging.join(d))?;
    }
    // The kernel runs /sbin/modprobe for the modules it asks for.
    let sbin = staging.join("sbin");
    std::os::unix::fs::symlink("bin", &sbin).map_err(io_err("symlink", &sbin))?;

    // busybox and a link for each of its applets.
    let bin = staging.join("bin");
    copy(Path::new(BUSYBOX), &bin.join("busybox"))?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(io_err("run", Path::new(BUSYBOX)))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            let link = bin.join(applet);
            std::os::unix::fs::symlink("busybox", &link).map_err(io_err("symlink", &link))?;
        }
    }
    copy(&init_path, &staging.join("init"))?;
    let init_copy = staging.join("init");
    fs::set_permissions(&init_copy, fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &init_copy))?;
    // The console init's first lines go to, before it mounts devtmpfs.
    let console = staging.join("dev/console");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &console,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(5, 1),
    )
    .map_err(|e| io_err("mknod", &console)(e.into()))?;

    let modules = copy_modules(kernel, &staging)?;
    println!(
        "vm: {} modules for {MODULES:?} ({})",
        modules.len(),
        kernel.release
    );
    let order = staging.join("modules");
    fs::write(&order, modules.join("\n") + "\n").map_err(io_err("write", &order))?;

    // The archive: every path under staging, parents first, by busybox cpio.
    let mut paths = Vec::new();
    list_tree(&staging, Path::new("."), &mut paths)?;
    let cpio = dir.join("initramfs.cpio");
    let _ = fs::remove_file(&image);
    pipe(
        Command::new(BUSYBOX)
            .args(["cpio", "-o", "-H", "newc"])
            .current_dir(&staging),
        paths.join("\n").as_bytes(),
        &cpio,
    )?;
    util::run_tool(Command::new(BUSYBOX).args(["gzip", "-f"]).arg(&cpio))?;
    fs::write(&stamp_path, stamp).map_err(io_err("write", &stamp_path))?;
    println!("vm: built {}", image.display());
    Ok(image)
}

/// Copies the modules of [`MODULES`] and their dependencies (soft ones included) from
/// the kernel package into `staging/lib/modules/REL`, decompressed, with a modules.dep
/// of their own (for the chroot's `modprobe` of a loaded module). Returns their paths in
/// the initramfs, in load order.
fn copy_modules(kernel: &Kernel, staging: &Path) -> Result<Vec<String>> {
    let src = kernel.root.join("lib/modules").join(&kernel.release);
    let dst = staging.join("lib/modules").join(&kernel.release);
    mkdir(&dst)?;
    let mut order: Vec<String> = Vec::new();
    for m in MODULES {
        // -C /dev/null: the options of the host's modprobe.d are not the VM's.
        let mut cmd = Command::new("modprobe");
        cmd.args(["-C", "/dev/null", "-d"]).arg(&kernel.root).args([
            "-S",
            &kernel.release,
            "--show-depends",
            m,
        ]);
        let out = cmd.output().map_err(io_err("run", Path::new("modprobe")))?;
        if !out.status.success() {
            return Err(XtaskError::Command {
                command: format!("{cmd:?}"),
                status: out.status,
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        // Lines: `insmod PATH [OPTIONS]`, or `builtin NAME`.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
            let rel = path.strip_prefix(&src).map_err(|_| XtaskError::Io {
                what: "find the module under the kernel's modules directory",
                path: path.clone(),
                source: std::io::Error::other(format!("not under {}", src.display())),
            })?;
            let (rel, decompress) = decompressed_name(rel);
            let guest = format!("/lib/modules/{}/{}", kernel.release, rel.display());
            if order.contains(&guest) {
                continue;
            }
            let target = dst.join(&rel);
            mkdir(target.parent().expect("a module is in a directory"))?;
            match decompress {
                None => copy(&path, &target)?,
                Some((tool, package)) => {
                    util::require_tool(tool, package)?;
                    let file = fs::File::create(&target).map_err(io_err("create", &target))?;
                    let status = Command::new(tool)
                        .arg("-dc")
                        .arg(&path)
                        .stdout(file)
                        .status()
                        .map_err(io_err("run", Path::new(tool)))?;
                    if !status.success() {
                        return Err(XtaskError::Script {
                            script: format!("{tool} -dc {}", path.display()).into(),
                            status,
                        });
                    }
                }
            }
            order.push(guest);
        }
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if src.join(f).exists() {
            copy(&src.join(f), &dst.join(f))?;
        }
    }
    util::run_tool(
        Command::new("depmod")
            .arg("-b")
            .arg(staging)
            .arg(&kernel.release),
    )?;
    Ok(order)
}

/// A module's name once decompressed (`.ko.xz` -> `.ko`) and the tool that does it,
/// or None for a plain `.ko`. busybox's insmod may not read compressed modules.
fn decompressed_name(rel: &Path) -> (PathBuf, Option<(&'static str, &'static str)>) {
    let s = rel.to_string_lossy();
    for (ext, tool, package) in [
        (".xz", "xz", "xz-utils"),
        (".zst", "zstd", "zstd"),
        (".gz", "gzip", "gzip"),
    ] {
        if let Some(plain) = s.strip_suffix(ext) {
            return (PathBuf::from(plain), Some((tool, package)));
        }
    }
    (rel.to_path_buf(), None)
}

/// Appends `rel` and, for a directory, everything under it (sorted, parents first).
fn list_tree(root: &Path, rel: &Path, paths: &mut Vec<String>) -> Result {
    paths.push(rel.to_string_lossy().into_owned());
    let full = root.join(rel);
    let meta = fs::symlink_metadata(&full).map_err(io_err("stat", &full))?;
    if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&full)
            .map_err(io_err("read", &full))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(io_err("read", &full))?;
        names.sort();
        for n in names {
            list_tree(root, &rel.join(n), paths)?;
        }
    }
    Ok(())
}

/// The script init runs with bash in the VM: cd to `cwd`, export `env`, exec `command`.
fn command_script(cwd: &Path, command: &[String], env: &[(String, String)]) -> String {
    let mut s = String::from("# Written by `cargo xtask vm`; the VM's init runs it with bash.\n");
    s += &format!("cd {} || exit 125\n", quote(&cwd.to_string_lossy()));
    for (k, v) in env {
        s += &format!("export {k}={}\n", quote(v));
    }
    s += "exec";
    for a in command {
        s += " ";
        s += &quote(a);
    }
    s + "\n"
}

/// `s` as one shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `k` is a shell variable name.
fn is_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `s` as a value in qemu's comma-separated options (a comma is doubled).
fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The qemu command line: the console on the serial port (to stdout, and to `log`), the
/// host's root read-only and `out` writable over virtio-9p.
fn qemu(accel: &Accel, kernel: &Path, initramfs: &Path, out: &Path, log: &Path) -> Command {
    let mut append = String::from("console=ttyS0 panic=-1 loglevel=4");
    // init binds the share over its host path too, when the kernel command line can
    // carry it (no spaces or quotes).
    let host_out = out.to_string_lossy();
    if !host_out.contains(|c: char| c.is_whitespace() || c == '"') {
        append += &format!(" vm_out={host_out}");
    }
    // The workspace, which init keeps visible when it lies under a directory the VM gives
    // a fresh tmpfs (/tmp, /var/tmp, /run).
    let ws = util::workspace_root();
    let ws = ws.to_string_lossy();
    if !ws.contains(|c: char| c.is_whitespace() || c == '"') {
        append += &format!(" vm_ws={ws}");
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => cmd.args(["-enable-kvm", "-cpu", "host"]),
        Accel::Tcg(_) => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    cmd.args(["-m", &MEMORY_MIB.to_string(), "-smp", &CPUS.to_string()])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-chardev")
        .arg(format!("stdio,id=console,logfile={}", qemu_escape(log)))
        .args(["-serial", "chardev:console"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(append)
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=out,security_model=none",
            qemu_escape(out)
        ))
        // Not the terminal: qemu would take it raw and eat Ctrl-C.
        .stdin(Stdio::null());
    cmd
}

/// Runs qemu in its own process group until it exits. SIGINT/SIGTERM stop it (SIGKILL
/// after 10 s) and fail; past `timeout` it is killed and this fails.
fn boot(cmd: &mut Command, timeout: Duration, log: &Path) -> Result<ExitStatus> {
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|source| XtaskError::Spawn {
        what: "starting",
        command: format!("{cmd:?}"),
        source,
    })?;
    let pgid = rustix::process::Pid::from_child(&child);
    let kill = |sig| {
        let _ = rustix::process::kill_process_group(pgid, sig);
    };
    let deadline = Instant::now() + timeout;
    let mut stopping: Option<Instant> = None;
    let mut timed_out = false;
    loop {
        let status = child.try_wait().map_err(|source| XtaskError::Spawn {
            what: "waiting for",
            command: format!("{cmd:?}"),
            source,
        })?;
        if let Some(status) = status {
            if let Some(signal) = util::interrupted() {
                return Err(XtaskError::Interrupted {
                    signal,
                    outcome: "the VM was stopped",
                });
            }
            if timed_out {
                return Err(XtaskError::VmTimeout {
                    timeout,
                    log: log.to_path_buf(),
                });
            }
            return Ok(status);
        }
        match stopping {
            None if util::interrupted().is_some() => {
                eprintln!("xtask: interrupted, stopping the VM");
                kill(rustix::process::Signal::TERM);
                stopping = Some(Instant::now());
            }
            None if Instant::now() > deadline => {
                eprintln!(
                    "xtask: the VM ran past {}, killing it",
                    util::minutes(timeout)
                );
                kill(rustix::process::Signal::KILL);
                timed_out = true;
                stopping = Some(Instant::now());
            }
            Some(t) if t.elapsed() > Duration::from_secs(10) => {
                kill(rustix::process::Signal::KILL);
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails unless `path` is a statically linked ELF (no PT_INTERP program header): the
/// initramfs has no dynamic loader.
fn require_static(path: &Path) -> Result {
    let elf = fs::read(path).map_err(io_err("read", path))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let not_elf = || XtaskError::Io {
        what: "read the ELF header of",
        path: path.to_path_buf(),
        source: std::io::Error::other("not a 64-bit ELF file"),
    };
    if !elf.starts_with(b"\x7fELF\x02") {
        return Err(not_elf());
    }
    let phoff = u64_at(0x20).ok_or_else(not_elf)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(not_elf)? as usize;
    let phnum = u16_at(0x38).ok_or_else(not_elf)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize).ok_or_else(not_elf)? == PT_INTERP {
            return Err(XtaskError::BusyboxNotStatic {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Runs `cmd` with `input` on its stdin and its stdout into the file `output`.
fn pipe(cmd: &mut Command, input: &[u8], output: &Path) -> Result {
    let file = fs::File::create(output).map_err(io_err("create", output))?;
    let spawn_error = |what, cmd: &Command, source| XtaskError::Spawn {
        what,
        command: format!("{cmd:?}"),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .map_err(|e| spawn_error("starting", cmd, e))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(input);
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| spawn_error("waiting for", cmd, e))?;
    if !status.success() {
        return Err(XtaskError::Script {
            script: format!("{cmd:?}").into(),
            status,
        });
    }
    written.map_err(|e| spawn_error("writing to", cmd, e))
}

fn mkdir(p: &Path) -> Result {
    fs::create_dir_all(p).map_err(io_err("mkdir", p))
}

fn copy(from: &Path, to: &Path) -> Result {
    fs::copy(from, to).map(drop).map_err(io_err("copy to", to))
}

/// The `map_err` of a filesystem call `what` on `path`.
fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> XtaskError {
    let path = path.to_path_buf();
    move |source| XtaskError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_quotes_every_word() {
        let s = command_script(
            Path::new("/w s"),
            &["bash".into(), "-c".into(), "echo 'a b' $X".into()],
            &[("X".into(), "it's".into())],
        );
        assert!(s.ends_with(
            "cd '/w s' || exit 125\nexport X='it'\\''s'\nexec 'bash' '-c' 'echo '\\''a b'\\'' $X'\n"
        ));
    }

    #[test]
    fn env_names_are_shell_names() {
        assert!(is_name("RUST_LOG"));
        assert!(is_name("_x1"));
        assert!(!is_name("1X"));
        assert!(!is_name("A-B"));
        assert!(!is_name(""));
    }

    #[test]
    fn compressed_modules_are_decompressed() {
        let (p, tool) = decompressed_name(Path::new("kernel/fs/xfs/xfs.ko.xz"));
        assert_eq!(p, Path::new("kernel/fs/xfs/xfs.ko"));
        assert_eq!(tool, Some(("xz", "xz-utils")));
        assert_eq!(decompressed_name(Path::new("a.ko")).1, None);
    }
}
