//! The letterbox-mail image for the tests: built for amd64 through the real CLI, once per
//! test binary, and its layer unpacked into a root to chroot into (the webmail image's too).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use oci_spec::image::{Arch, ImageIndex, ImageManifest, MediaType, Os};

/// Not the default epoch, so the test sees that SOURCE_DATE_EPOCH is what stamps the layer.
pub const EPOCH: u64 = 1_700_000_000;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Built {
    _dir: tempfile::TempDir,
    pub layout: PathBuf,
    pub stdout: String,
}

/// `letterbox mail-image --arch amd64` into `output`, run by a shell with `umask`.
pub fn build_into(output: &Path, umask: &str) -> Output {
    build_image("mail", "amd64", output, umask)
}

/// `letterbox mail-image --image IMAGE --arch ARCH` into `output`, run by a shell with
/// `umask`.
pub fn build_image(image: &str, arch: &str, output: &Path, umask: &str) -> Output {
    Command::new("sh")
        .current_dir(repo())
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .env("TZ", "EST5EDT")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg(super::letterbox_bin())
        .args(["mail-image", "--image", image, "--arch", arch])
        .args(["--cache", ".cache", "-o"])
        .arg(output)
        .output()
        .expect("run letterbox mail-image")
}

/// The image, built once for every test of this binary; None (skipped) without the tools.
pub fn built(test: &str) -> Option<&'static Built> {
    static BUILT: OnceLock<Option<Built>> = OnceLock::new();
    for tool in ["mmdebstrap", "dpkg-deb"] {
        if !super::installed(test, tool) {
            return None;
        }
    }
    BUILT
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let layout = dir.path().join("letterbox-mail-amd64");
            let out = build_into(&layout, "022");
            assert!(
                out.status.success(),
                "letterbox mail-image failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            Some(Built {
                _dir: dir,
                layout,
                stdout: String::from_utf8(out.stdout).unwrap(),
            })
        })
        .as_ref()
}

pub fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

pub fn the_manifest(layout: &Path) -> (String, ImageManifest) {
    the_manifest_for(layout, Arch::Amd64)
}

/// The layout's one manifest, for `arch`, and its digest.
pub fn the_manifest_for(layout: &Path, arch: Arch) -> (String, ImageManifest) {
    let index = ImageIndex::from_file(layout.join("index.json")).unwrap();
    assert_eq!(index.manifests().len(), 1);
    let descriptor = &index.manifests()[0];
    assert_eq!(descriptor.media_type(), &MediaType::ImageManifest);
    let platform = descriptor.platform().as_ref().expect("a platform");
    assert_eq!(
        (platform.architecture(), platform.os()),
        (&arch, &Os::Linux)
    );
    let digest = descriptor.digest().to_string();
    let bytes = blob(layout, &digest);
    assert_eq!(bytes.len() as u64, descriptor.size());
    (
        digest,
        ImageManifest::from_reader(bytes.as_slice()).unwrap(),
    )
}

pub fn the_layer(layout: &Path) -> Vec<u8> {
    let (_, manifest) = the_manifest(layout);
    blob(layout, manifest.layers()[0].digest().as_ref())
}

/// The layer unpacked by the host's tar (not the writer's crate), with the /dev/null the
/// container runtime would provide; None (skipped) when not root.
pub fn unpacked_rootfs(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    let built = built(test)?;
    if !super::is_root() {
        super::skip(test, "chroot needs root");
        return None;
    }
    Some(unpack(&built.layout))
}

/// The layer of the amd64 image at `layout` unpacked by the host's tar, with /dev/null.
pub fn unpack(layout: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    let layer = dir.path().join("layer.tar.gz");
    std::fs::write(&layer, the_layer(layout)).unwrap();
    super::run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&root),
    );
    super::run_ok(
        Command::new("mknod")
            .args(["-m", "666"])
            .arg(root.join("dev/null"))
            .args(["c", "1", "3"]),
    );
    (dir, root)
}

pub fn chroot(root: &Path, args: &[&str]) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin")
        .output()
        .unwrap()
}
