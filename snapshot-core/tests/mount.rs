//! The mount helpers against the real kernel: deep overlays through the new mount API
//! (with layer paths longer than one `fsconfig` value), read-only overlays and binds, the
//! legacy mount(2) route with relative layer paths, and the refusal of option strings that
//! mount(2) would cut.
//!
//! The mounting tests are privileged: they run when `SNAPSHOT_TEST_PRIVILEGED=1`, print a
//! skip line when it is unset, and fail when it is set but the process is not root or the
//! kernel has no overlayfs. Every mount is taken off by a guard, also when a test fails.

use std::fs;
use std::path::{Path, PathBuf};

use snapshot_core::mount::{
    mount_all, mount_of, mount_overlay_legacy, mountinfo, overlay_supports_lowerdir_plus,
    parse_mountinfo, relative_overlay_data, unescape_mountinfo, unmount, unmount_all,
    LEGACY_OPTIONS_MAX,
};
use snapshot_core::{ErrorKind, Mount};
use tempfile::TempDir;

const EROFS: i32 = 30;

/// True if the privileged tests are to run (the workspace's one gate, the suite's); panics
/// when they are asked for but cannot.
fn privileged(test: &str, needs_overlay: bool) -> bool {
    if !snapshot_testsuite::privileged::require_privileged(test) {
        return false;
    }
    if needs_overlay {
        let fss = fs::read_to_string("/proc/filesystems").unwrap();
        if !fss
            .lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
        {
            return snapshot_testsuite::privileged::unavailable(
                test,
                "the kernel has no overlayfs (modprobe overlay)",
            );
        }
    }
    true
}

/// Unmounts everything at its target when dropped, so a failing test leaves no mount.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount_all(&self.0) {
            eprintln!("cleanup: unmounting {}: {e}", self.0.display());
        }
    }
}

/// The fs types of the mounts at `target`, in mount order.
fn mounts_at(target: &Path) -> Vec<String> {
    let target = fs::canonicalize(target).unwrap();
    mountinfo()
        .unwrap()
        .into_iter()
        .filter(|e| e.mount_point == target)
        .map(|e| e.fs_type)
        .collect()
}

/// The per-mount options (mountinfo's sixth field) of the topmost mount at `target`.
fn mount_options_at(target: &Path) -> Vec<String> {
    let target = fs::canonicalize(target).unwrap();
    mountinfo()
        .unwrap()
        .into_iter()
        .rfind(|e| e.mount_point == target)
        .unwrap_or_else(|| panic!("nothing mounted at {}", target.display()))
        .options
}

/// `n` layer directories under `base`, bottom (0) first. Every `long_every`th one sits
/// under a path longer than 255 bytes. Layer `i` holds `layer-<i>` and `top` = "layer-<i>".
fn make_layers(base: &Path, n: usize, long_every: usize) -> Vec<PathBuf> {
    let long = base
        .join(format!("long-{}", "x".repeat(200)))
        .join("y".repeat(100));
    (0..n)
        .map(|i| {
            let dir = if long_every > 0 && i % long_every == 0 {
                long.join(i.to_string())
            } else {
                base.join("l").join(i.to_string())
            };
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("layer-{i}")), i.to_string()).unwrap();
            fs::write(dir.join("top"), format!("layer-{i}")).unwrap();
            dir
        })
        .collect()
}

/// `lowerdir=` nearest first: the last layer made is the nearest.
fn lowerdir(layers: &[PathBuf]) -> String {
    let l: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    format!("lowerdir={}", l.join(":"))
}

fn index_off() -> Vec<String> {
    if Path::new("/sys/module/overlay/parameters/index").exists() {
        vec!["index=off".to_string()]
    } else {
        vec![]
    }
}

fn assert_layers_visible(target: &Path, n: usize) {
    for i in 0..n {
        let got = fs::read_to_string(target.join(format!("layer-{i}")))
            .unwrap_or_else(|e| panic!("layer-{i} missing from the overlay: {e}"));
        assert_eq!(got, i.to_string());
    }
    assert_eq!(
        fs::read_to_string(target.join("top")).unwrap(),
        format!("layer-{}", n - 1)
    );
}

fn write_error(target: &Path) -> std::io::Error {
    fs::write(target.join("new-file"), b"x").expect_err("write to a read-only mount")
}

struct Fixture {
    tmp: TempDir,
    target: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    fs::create_dir(&target).unwrap();
    Fixture { tmp, target }
}

#[test]
fn overlay_of_200_layers_with_upper_and_long_paths() {
    if !privileged("overlay_of_200_layers_with_upper_and_long_paths", true) {
        return;
    }
    assert!(
        overlay_supports_lowerdir_plus(),
        "Linux 6.8+ expected on this machine"
    );
    let fx = fixture();
    let layers = make_layers(fx.tmp.path(), 200, 10);
    assert!(
        layers[0].as_os_str().len() > 255,
        "some lower paths exceed one fsconfig value"
    );
    // upper and work sit under long paths too (the descriptor route for them).
    let rw = fx.tmp.path().join("z".repeat(250));
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    assert!(upper.as_os_str().len() > 255);
    let mut options = index_off();
    options.extend([
        "nosuid".to_string(),
        "nodev".to_string(),
        "noatime".to_string(),
    ]);
    options.push(format!("workdir={}", work.display()));
    options.push(format!("upperdir={}", upper.display()));
    options.push(lowerdir(&layers));
    assert!(
        options.join(",").len() > 2 * LEGACY_OPTIONS_MAX,
        "far beyond one page"
    );
    let m = Mount::new("overlay", "overlay", options);
    mount_all(std::slice::from_ref(&m), &fx.target).unwrap();
    let _guard = Mounted(fx.target.clone());
    assert_eq!(mounts_at(&fx.target), ["overlay"]);
    let flags = mount_options_at(&fx.target);
    for f in ["rw", "nosuid", "nodev", "noatime"] {
        assert!(flags.iter().any(|x| x == f), "{f} missing from {flags:?}");
    }
    assert_layers_visible(&fx.target, 200);
    // Writes land in the upper directory; the layers stay untouched.
    fs::write(fx.target.join("top"), "changed").unwrap();
    fs::write(fx.target.join("new-file"), "new").unwrap();
    assert_eq!(fs::read_to_string(upper.join("top")).unwrap(), "changed");
    assert_eq!(fs::read_to_string(upper.join("new-file")).unwrap(), "new");
    assert_eq!(
        fs::read_to_string(layers[199].join("top")).unwrap(),
        "layer-199"
    );
    drop(_guard);
    assert!(mounts_at(&fx.target).is_empty());
}

#[test]
fn read_only_overlay_of_200_lower_layers() {
    if !privileged("read_only_overlay_of_200_lower_layers", true) {
        return;
    }
    let fx = fixture();
    let layers = make_layers(fx.tmp.path(), 200, 7);
    let mut options = index_off();
    options.push(lowerdir(&layers));
    mount_all(&[Mount::new("overlay", "overlay", options)], &fx.target).unwrap();
    let _guard = Mounted(fx.target.clone());
    assert_layers_visible(&fx.target, 200);
    assert_eq!(write_error(&fx.target).raw_os_error(), Some(EROFS));
    // An explicit "ro" makes the mount itself read-only as well.
    drop(_guard);
    let mut options = index_off();
    options.push("ro".into());
    options.push(lowerdir(&layers[..2]));
    mount_all(&[Mount::new("overlay", "overlay", options)], &fx.target).unwrap();
    let _guard = Mounted(fx.target.clone());
    assert!(mount_options_at(&fx.target).contains(&"ro".to_string()));
    assert_layers_visible(&fx.target, 2);
    assert_eq!(write_error(&fx.target).raw_os_error(), Some(EROFS));
}

#[test]
fn bind_mounts_ro_and_rw() {
    if !privileged("bind_mounts_ro_and_rw", false) {
        return;
    }
    let fx = fixture();
    let src = fx.tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "content").unwrap();
    let ro = Mount::new(
        "bind",
        src.display().to_string(),
        vec!["ro".into(), "rbind".into()],
    );
    mount_all(&[ro], &fx.target).unwrap();
    let guard = Mounted(fx.target.clone());
    assert_eq!(fs::read_to_string(fx.target.join("f")).unwrap(), "content");
    assert_eq!(write_error(&fx.target).raw_os_error(), Some(EROFS));
    assert_eq!(mounts_at(&fx.target).len(), 1);
    // The source itself stays writable: only the bind is read-only.
    fs::write(src.join("g"), "still writable").unwrap();
    drop(guard);
    let rw = Mount::new(
        "bind",
        src.display().to_string(),
        vec!["rbind".into(), "rw".into()],
    );
    mount_all(&[rw], &fx.target).unwrap();
    let _guard = Mounted(fx.target.clone());
    fs::write(fx.target.join("h"), "through the bind").unwrap();
    assert_eq!(
        fs::read_to_string(src.join("h")).unwrap(),
        "through the bind"
    );
    // A plain (non-recursive) bind given as type "none" with the "bind" option.
    let plain = Mount::new(
        "none",
        src.display().to_string(),
        vec!["bind".into(), "ro".into()],
    );
    let t2 = fx.tmp.path().join("t2");
    fs::create_dir(&t2).unwrap();
    mount_all(&[plain], &t2).unwrap();
    let _g2 = Mounted(t2.clone());
    assert_eq!(write_error(&t2).raw_os_error(), Some(EROFS));
}

#[test]
fn unmount_all_leaves_nothing_mounted() {
    if !privileged("unmount_all_leaves_nothing_mounted", false) {
        return;
    }
    let fx = fixture();
    let (a, b) = (fx.tmp.path().join("a"), fx.tmp.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(b.join("from-b"), "").unwrap();
    let stack = [
        Mount::new("bind", a.display().to_string(), vec!["rbind".into()]),
        Mount::new(
            "bind",
            b.display().to_string(),
            vec!["ro".into(), "rbind".into()],
        ),
        Mount::new("tmpfs", "tmpfs", vec!["size=1m".into(), "mode=0755".into()]),
    ];
    mount_all(&stack, &fx.target).unwrap();
    let guard = Mounted(fx.target.clone());
    assert_eq!(
        mounts_at(&fx.target).len(),
        3,
        "later mounts stack on earlier ones"
    );
    assert_eq!(mounts_at(&fx.target)[2], "tmpfs");
    unmount(&fx.target).unwrap();
    assert!(
        fx.target.join("from-b").exists(),
        "the bind of b is on top again"
    );
    unmount_all(&fx.target).unwrap();
    assert!(mounts_at(&fx.target).is_empty());
    // Fine when nothing is mounted; a single unmount then says so.
    unmount_all(&fx.target).unwrap();
    assert_eq!(unmount(&fx.target).unwrap_err().kind(), ErrorKind::Unknown);
    drop(guard);
}

#[test]
fn a_failing_mount_takes_the_earlier_ones_off() {
    if !privileged("a_failing_mount_takes_the_earlier_ones_off", false) {
        return;
    }
    let fx = fixture();
    let a = fx.tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    let missing = fx.tmp.path().join("missing");
    let stack = [
        Mount::new("bind", a.display().to_string(), vec!["rbind".into()]),
        Mount::new("bind", a.display().to_string(), vec!["rbind".into()]),
        Mount::new("bind", missing.display().to_string(), vec!["rbind".into()]),
    ];
    let _guard = Mounted(fx.target.clone());
    let e = mount_all(&stack, &fx.target).unwrap_err();
    assert!(e.message().contains(&missing.display().to_string()), "{e}");
    assert!(
        mounts_at(&fx.target).is_empty(),
        "{:?}",
        mounts_at(&fx.target)
    );
}

#[test]
fn overlay_beyond_the_kernel_layer_limit_is_refused_not_truncated() {
    if !privileged(
        "overlay_beyond_the_kernel_layer_limit_is_refused_not_truncated",
        true,
    ) {
        return;
    }
    let fx = fixture();
    let layers = make_layers(fx.tmp.path(), 501, 0);
    let mut options = index_off();
    options.push(lowerdir(&layers));
    let _guard = Mounted(fx.target.clone());
    let e = mount_all(&[Mount::new("overlay", "overlay", options)], &fx.target).unwrap_err();
    assert!(e.message().contains("overlay"), "{e}");
    assert!(mounts_at(&fx.target).is_empty());
    // 500 is the kernel's limit and mounts whole.
    let mut options = index_off();
    options.push(lowerdir(&layers[1..]));
    mount_all(&[Mount::new("overlay", "overlay", options)], &fx.target).unwrap();
    for i in 1..501 {
        assert!(fx.target.join(format!("layer-{i}")).exists(), "layer-{i}");
    }
    assert!(!fx.target.join("layer-0").exists());
}

/// Snapshot-style layers `<base>/snapshots/<id>/fs`, ids 1..=n, bottom first.
fn snapshot_layers(base: &Path, n: usize) -> Vec<PathBuf> {
    (1..=n)
        .map(|id| {
            let fs_dir = base.join("snapshots").join(id.to_string()).join("fs");
            fs::create_dir_all(&fs_dir).unwrap();
            fs::write(
                fs_dir.join(format!("layer-{}", id - 1)),
                (id - 1).to_string(),
            )
            .unwrap();
            fs::write(fs_dir.join("top"), format!("layer-{}", id - 1)).unwrap();
            fs_dir
        })
        .collect()
}

#[test]
fn legacy_route_mounts_long_stacks_with_relative_paths() {
    if !privileged("legacy_route_mounts_long_stacks_with_relative_paths", true) {
        return;
    }
    let fx = fixture();
    let layers = snapshot_layers(fx.tmp.path(), 200);
    let own = fx.tmp.path().join("snapshots").join("201");
    fs::create_dir_all(own.join("fs")).unwrap();
    fs::create_dir_all(own.join("work")).unwrap();
    let mut options = index_off();
    options.push(format!("workdir={}", own.join("work").display()));
    options.push(format!("upperdir={}", own.join("fs").display()));
    options.push(lowerdir(&layers));
    let data_len = options.join(",").len();
    assert!(
        data_len > LEGACY_OPTIONS_MAX,
        "{data_len} bytes: only relative paths fit"
    );
    let cwd = std::env::current_dir().unwrap();
    mount_overlay_legacy(&Mount::new("overlay", "overlay", options), &fx.target).unwrap();
    let _guard = Mounted(fx.target.clone());
    assert_eq!(
        std::env::current_dir().unwrap(),
        cwd,
        "the process cwd is untouched"
    );
    assert_eq!(mounts_at(&fx.target), ["overlay"]);
    assert_layers_visible(&fx.target, 200);
    fs::write(fx.target.join("written"), "up").unwrap();
    assert!(own.join("fs/written").exists());
    drop(_guard);

    // A short stack goes straight through mount(2).
    let mut options = index_off();
    options.push(lowerdir(&layers[..3]));
    mount_overlay_legacy(&Mount::new("overlay", "overlay", options), &fx.target).unwrap();
    let _guard = Mounted(fx.target.clone());
    assert_layers_visible(&fx.target, 3);
    assert_eq!(write_error(&fx.target).raw_os_error(), Some(EROFS));
}

#[test]
fn legacy_route_refuses_what_mount2_would_cut() {
    if !privileged("legacy_route_refuses_what_mount2_would_cut", true) {
        return;
    }
    let fx = fixture();
    // Long directory names: even relative to their common directory the option string is
    // longer than a page.
    let layers: Vec<PathBuf> = (0..60)
        .map(|i| {
            let d = fx
                .tmp
                .path()
                .join("snapshots")
                .join(format!("{i}-{}", "p".repeat(90)));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(format!("layer-{i}")), "").unwrap();
            d
        })
        .collect();
    let m = Mount::new("overlay", "overlay", vec![lowerdir(&layers)]);
    let _guard = Mounted(fx.target.clone());
    let e = mount_overlay_legacy(&m, &fx.target).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("truncated"), "{e}");
    assert!(mounts_at(&fx.target).is_empty(), "nothing was mounted");
    // The new mount API takes the same stack whole.
    mount_all(&[m], &fx.target).unwrap();
    for i in 0..60 {
        assert!(fx.target.join(format!("layer-{i}")).exists());
    }
}

// ---- Pure functions: no privileges needed -------------------------------------------------

#[test]
fn relative_data_of_500_layers_fits_one_page() {
    let root = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
    let lower: Vec<String> = (1..=500).rev().map(|i| format!("{root}/{i}/fs")).collect();
    let data = vec![
        "index=off".to_string(),
        format!("workdir={root}/501/work"),
        format!("upperdir={root}/501/fs"),
        format!("lowerdir={}", lower.join(":")),
    ];
    assert!(data.join(",").len() > 8 * LEGACY_OPTIONS_MAX);
    let (dir, rel) = relative_overlay_data(&data).unwrap();
    assert_eq!(dir, Path::new(root));
    assert!(rel.len() <= LEGACY_OPTIONS_MAX, "{} bytes", rel.len());
    assert!(rel.starts_with("index=off,workdir=501/work,upperdir=501/fs,lowerdir=500/fs:499/fs:"));
    assert!(rel.ends_with(":2/fs:1/fs"));
    assert_eq!(rel.matches("/fs").count(), 501);
}

#[test]
fn relative_data_edge_cases() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // Ids sharing a textual prefix still split at a directory boundary.
    let (dir, rel) =
        relative_overlay_data(&s(&["lowerdir=/s/snapshots/1/fs:/s/snapshots/10/fs"])).unwrap();
    assert_eq!(
        (dir.as_path(), rel.as_str()),
        (Path::new("/s/snapshots"), "lowerdir=1/fs:10/fs")
    );
    // A layer that is the common directory itself keeps a name (containerd's path.Dir).
    let (dir, rel) = relative_overlay_data(&s(&["lowerdir=/x/a:/x/a/b"])).unwrap();
    assert_eq!(
        (dir.as_path(), rel.as_str()),
        (Path::new("/x"), "lowerdir=a:a/b")
    );
    // Nothing in common but the root: no relative form.
    assert!(relative_overlay_data(&s(&["lowerdir=/a/x:/b/y"])).is_none());
    assert!(relative_overlay_data(&s(&["index=off"])).is_none());
}

#[test]
fn legacy_route_refuses_overlong_options_without_a_syscall() {
    // No common directory and more than a page: refused before mount(2) is called, so
    // this runs unprivileged and the target need not exist.
    let lower: Vec<String> = (0..300).map(|i| format!("/top-{i}/layer/fs")).collect();
    let m = Mount::new(
        "overlay",
        "overlay",
        vec![format!("lowerdir={}", lower.join(":"))],
    );
    let e = mount_overlay_legacy(&m, Path::new("/nonexistent-target")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("/nonexistent-target"), "{e}");
    // Other mount types are not the legacy overlay route's business.
    let bind = Mount::new("bind", "/x", vec!["rbind".into()]);
    let e = mount_overlay_legacy(&bind, Path::new("/t")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn mountinfo_parsing() {
    assert_eq!(unescape_mountinfo(r"/tmp/with\040space"), "/tmp/with space");
    assert_eq!(unescape_mountinfo("/plain"), "/plain");
    let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                90 22 7:0 / /mnt/a\\040b ro,nosuid shared:40 - btrfs /dev/loop0 rw,subvolid=5\n\
                93 22 7:2 / /mnt/a\\040b rw - tmpfs tmpfs rw\n\
                94 22 0:50 / /run/c rw - overlay overlay rw,lowerdir=/r/s/2/fs:/r/s/1/fs,upperdir=/r/s/a\\054b/fs,workdir=/r/s/3/work\n\
                95 22 8:1 /var/lib/s/snapshots/4/fs /run/v ro - ext4 /dev/sda1 rw\n";
    let e = parse_mountinfo(text);
    assert_eq!(e.len(), 5);
    assert_eq!(
        (e[1].dev.as_str(), e[1].root.as_path()),
        ("7:0", Path::new("/"))
    );
    assert_eq!(e[1].super_options, vec!["rw", "subvolid=5"]);
    // A comma inside an overlay's path (written `\054`) stays inside its option.
    assert_eq!(
        e[3].super_options,
        vec![
            "rw",
            "lowerdir=/r/s/2/fs:/r/s/1/fs",
            "upperdir=/r/s/a,b/fs",
            "workdir=/r/s/3/work"
        ]
    );
    assert_eq!(e[4].root, Path::new("/var/lib/s/snapshots/4/fs"));
    assert_eq!(e[1].mount_point, Path::new("/mnt/a b"));
    assert_eq!(e[1].options, vec!["ro", "nosuid"]);
    assert_eq!(
        (e[1].fs_type.as_str(), e[1].source.as_str()),
        ("btrfs", "/dev/loop0")
    );
    // The later mount at the same point shadows the earlier one.
    assert_eq!(
        mount_of(&e, Path::new("/mnt/a b/x")).unwrap().fs_type,
        "tmpfs"
    );
    assert_eq!(
        mount_of(&e, Path::new("/mnt/ab")).unwrap().mount_point,
        Path::new("/")
    );
}

/// The owner `stat` reports for `path`.
fn owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

fn opts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn idmapped_bind_shows_the_mapped_owner_and_changes_nothing_on_disk() {
    if !privileged("idmapped_bind_shows_the_mapped_owner", false) {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    std::os::unix::fs::lchown(src.join("f"), Some(5), Some(7)).unwrap();
    let target = tmp.path().join("mnt");
    fs::create_dir(&target).unwrap();
    // Two ranges: container 0 is host 100000, container 5 falls in the second range.
    let m = Mount::new(
        "bind",
        src.to_str().unwrap(),
        opts(&[
            "uidmap=0:100000:1,1:200001:65535",
            "gidmap=0:300000:65536",
            "ro",
            "rbind",
        ]),
    );
    mount_all(std::slice::from_ref(&m), &target).unwrap();
    let _g = Mounted(target.clone());
    assert_eq!(
        owner(&target),
        (100000, 300000),
        "the root, owned by 0 on disk"
    );
    assert_eq!(owner(&target.join("f")), (200005, 300007));
    assert_eq!(
        owner(&src.join("f")),
        (5, 7),
        "the files themselves are not chowned"
    );
    let e = fs::write(target.join("g"), "y").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(EROFS),
        "ro holds on the idmapped bind"
    );
}

#[test]
fn idmapped_overlay_maps_the_lower_layers_only() {
    if !privileged("idmapped_overlay_maps_the_lower_layers_only", true) {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let layers = tmp.path().join("snapshots");
    let (l1, l2, upper, work) = (
        layers.join("1/fs"),
        layers.join("2/fs"),
        layers.join("3/fs"),
        layers.join("3/work"),
    );
    for d in [&l1, &l2, &upper, &work] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(l1.join("low"), "1").unwrap();
    fs::write(l2.join("mid"), "2").unwrap();
    std::os::unix::fs::lchown(&upper, Some(100000), Some(100000)).unwrap();
    let target = tmp.path().join("mnt");
    fs::create_dir(&target).unwrap();
    let m = Mount::new(
        "overlay",
        "overlay",
        vec![
            "uidmap=0:100000:65536".into(),
            "gidmap=0:100000:65536".into(),
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={}:{}", l2.display(), l1.display()),
        ],
    );
    mount_all(std::slice::from_ref(&m), &target).unwrap();
    let g = Mounted(target.clone());
    assert_eq!(owner(&target.join("low")), (100000, 100000));
    assert_eq!(owner(&target.join("mid")), (100000, 100000));
    assert_eq!(
        owner(&target),
        (100000, 100000),
        "the root is the upper directory's"
    );
    fs::write(target.join("new"), "n").unwrap();
    assert!(
        upper.join("new").exists(),
        "writes go to the upper directory"
    );
    assert_eq!(owner(&l1.join("low")), (0, 0), "no layer file is chowned");
    // The temporary idmapped layers are detached: only the overlay is mounted.
    let left: Vec<String> = mountinfo()
        .unwrap()
        .into_iter()
        .map(|e| e.mount_point.to_string_lossy().into_owned())
        .filter(|p| p.contains(".snapshot-idmap-"))
        .collect();
    assert!(left.is_empty(), "idmapped layers left mounted: {left:?}");
    drop(g);
}

#[test]
fn idmap_options_are_checked() {
    if !privileged("idmap_options_are_checked", false) {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let target = tmp.path().join("mnt");
    fs::create_dir(&target).unwrap();
    let src = tmp.path().to_str().unwrap();
    for (options, says) in [
        (
            opts(&["uidmap=0:1000:10", "rbind"]),
            "only one of uidmap= and gidmap=",
        ),
        (
            opts(&["uidmap=0:1000", "gidmap=0:1000:10", "rbind"]),
            "mount option uidmap",
        ),
        (
            opts(&["uidmap=0:1000:1", "gidmap=x", "rbind"]),
            "mount option gidmap",
        ),
    ] {
        let e = mount_all(&[Mount::new("bind", src, options.clone())], &target).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{options:?}: {e}");
        assert!(e.to_string().contains(says), "{options:?}: {e}");
    }
    assert!(mounts_at(&target).is_empty(), "nothing was mounted");
}

/// The probe for idmapped mounts: a directory on this disk takes them; an overlayfs
/// mount (which cannot itself be idmapped) does not; neither changes.
#[test]
fn the_idmapped_mount_probe_tells_filesystems_apart() {
    if !privileged("the_idmapped_mount_probe_tells_filesystems_apart", true) {
        return;
    }
    let tmp = TempDir::new().unwrap();
    snapshot_core::mount::idmapped_mounts_on(tmp.path())
        .expect("the temporary directory's filesystem takes idmapped mounts");
    let (lower, target) = (tmp.path().join("lower"), tmp.path().join("ovl"));
    fs::create_dir_all(lower.join("a")).unwrap();
    fs::create_dir_all(tmp.path().join("lower2")).unwrap();
    fs::create_dir(&target).unwrap();
    let m = Mount::new(
        "overlay",
        "overlay",
        opts(&[&format!(
            "lowerdir={}:{}",
            lower.display(),
            tmp.path().join("lower2").display()
        )]),
    );
    mount_all(std::slice::from_ref(&m), &target).unwrap();
    let _g = Mounted(target.clone());
    let e = snapshot_core::mount::idmapped_mounts_on(&target).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_einval()), "{e}");
    assert!(target.join("a").is_dir(), "the overlay is untouched");
}

fn libc_einval() -> i32 {
    rustix::io::Errno::INVAL.raw_os_error()
}

/// The helper process an idmapped mount makes shares this process's descriptors rather
/// than holding copies: a file another thread opens inside a mount, and closes, never
/// keeps that mount busy. (With copies, an unmount racing the helper failed with EBUSY.)
#[test]
fn idmapped_mount_helpers_never_keep_other_threads_mounts_busy() {
    if !privileged(
        "idmapped_mount_helpers_never_keep_other_threads_mounts_busy",
        false,
    ) {
        return;
    }
    let tmp = TempDir::new().unwrap();
    let probe_dir = tmp.path().to_path_buf();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                snapshot_core::mount::idmapped_mounts_on(&probe_dir).unwrap();
            }
        });
        let target = tmp.path().join("m");
        fs::create_dir(&target).unwrap();
        for round in 0..300 {
            rustix::mount::mount(
                "tmpfs",
                &target,
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                None,
            )
            .unwrap();
            let f = fs::File::create(target.join("f")).unwrap();
            drop(f);
            let r = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty());
            if r.is_err() {
                let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                panic!("round {round}: unmount {}: {r:?}", target.display());
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
