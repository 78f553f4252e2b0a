//! OCI image layouts (image-spec v1.1) of one layer, byte-reproducible: the layer is a tar
//! of a [`Tree`] in path order, every entry stamped with one epoch and the owner and mode the
//! tree says (never the build host's), gzip-compressed with a fixed header; the JSON blobs are
//! serialized with sorted keys.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use oci_spec::image::{
    Arch as OciArch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder,
    RootFsBuilder, Sha256Digest, ANNOTATION_REF_NAME,
};
use sha2::{Digest as _, Sha256};

use super::packages::Arch;
use super::ImageError;

/// containerd's import takes the image's name from this annotation of index.json.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file: its content is read from this path when the layer is written.
    File(PathBuf),
    /// A regular file given by its content (overlays).
    Bytes(Vec<u8>),
    Symlink(PathBuf),
    /// A hard link to an earlier entry of the layer (a path in the tree).
    HardLink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Entry {
    /// Owned by root, as everything is unless a rule says otherwise.
    pub fn root(kind: Kind, mode: u32) -> Entry {
        Entry {
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// A layer's contents by path relative to the root ("usr/bin/env"), in tar order: a parent
/// sorts before its children.
pub type Tree = BTreeMap<String, Entry>;

/// The files, directories and links under `dir` for which `keep` is true, owned by root,
/// with their permission bits. Files that share an inode become hard links to the first of
/// them in path order (as in the Debian packages they came from).
pub fn scan(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Tree, ImageError> {
    let mut tree = Tree::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(current) = todo.pop() {
        for item in std::fs::read_dir(&current).map_err(|e| ImageError::io(&current, e))? {
            let item = item.map_err(|e| ImageError::io(&current, e))?;
            let path = item.path();
            let relative = path
                .strip_prefix(dir)
                .expect("read_dir yields paths under its directory")
                .to_str()
                .ok_or_else(|| ImageError::Layout(format!("{} is not UTF-8", path.display())))?
                .to_string();
            if !keep(&relative) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(|e| ImageError::io(&path, e))?;
            let mode = meta.mode() & 0o7777;
            let kind = if meta.is_dir() {
                todo.push(path.clone());
                Kind::Dir
            } else if meta.is_symlink() {
                Kind::Symlink(std::fs::read_link(&path).map_err(|e| ImageError::io(&path, e))?)
            } else if meta.is_file() {
                if meta.nlink() > 1 {
                    inodes
                        .entry((meta.dev(), meta.ino()))
                        .or_default()
                        .push(relative.clone());
                }
                Kind::File(path.clone())
            } else {
                return Err(ImageError::Layout(format!(
                    "{}: only files, directories and symbolic links go into a layer",
                    path.display()
                )));
            };
            tree.insert(relative, Entry::root(kind, mode));
        }
    }
    for mut paths in inodes.into_values() {
        paths.sort();
        let (first, others) = paths.split_first().expect("one path per inode at least");
        for other in others {
            if let Some(entry) = tree.get_mut(other) {
                entry.kind = Kind::HardLink(first.clone());
            }
        }
    }
    Ok(tree)
}

/// `path` and its missing parents, as root-owned directories (`mode` for `path` itself).
pub fn add_directories(tree: &mut Tree, path: &str, mode: u32) {
    let mut prefix = String::new();
    for (i, part) in path.split('/').enumerate() {
        if i > 0 {
            prefix.push('/');
        }
        prefix.push_str(part);
        let last = prefix.len() == path.len();
        tree.entry(prefix.clone())
            .or_insert_with(|| Entry::root(Kind::Dir, if last { mode } else { 0o755 }));
    }
}

/// A blob's "sha256:<hex>" digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// A written layer: the compressed blob and the digest of its uncompressed tar (the diff_id).
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Blob,
    pub diff_id: String,
}

/// Passes bytes on while hashing and counting them.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (W, Blob) {
        let digest = format!(
            "sha256:{}",
            data_encoding::HEXLOWER.encode(&self.hasher.finalize())
        );
        (
            self.inner,
            Blob {
                digest,
                size: self.len,
            },
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An OCI image layout being written: `oci-layout`, `blobs/sha256/*`, then `index.json`.
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn create(dir: &Path) -> Result<Layout, ImageError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| ImageError::io(&blobs, e))?;
        let layout = OciLayoutBuilder::default()
            .image_layout_version("1.0.0")
            .build()?;
        write_file(&dir.join("oci-layout"), &canonical_json(&layout)?)?;
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join("blobs/sha256").join(hex)
    }

    fn write_blob(&self, bytes: &[u8]) -> Result<Blob, ImageError> {
        let mut hashing = Hashing::new(std::io::sink());
        hashing
            .write_all(bytes)
            .expect("writing to a sink cannot fail");
        let (_, blob) = hashing.finish();
        write_file(&self.blob_path(&blob.digest), bytes)?;
        Ok(blob)
    }

    /// Writes `tree` as a gzip-compressed tar layer, every entry's mtime `epoch`.
    pub fn write_layer(&self, tree: &Tree, epoch: u64) -> Result<Layer, ImageError> {
        let partial = self.dir.join("blobs/sha256/layer.partial");
        let file = std::fs::File::create(&partial).map_err(|e| ImageError::io(&partial, e))?;
        let compressed = Hashing::new(std::io::BufWriter::with_capacity(1 << 20, file));
        // No file name and mtime 0 in the gzip header; flate2 writes a fixed OS byte.
        let gzip = GzBuilder::new()
            .mtime(0)
            .write(compressed, Compression::default());
        let mut tar = tar::Builder::new(Hashing::new(gzip));
        for (path, entry) in tree {
            append(&mut tar, path, entry, epoch).map_err(|e| ImageError::io(&partial, e))?;
        }
        let io = |e| ImageError::io(&partial, e);
        let (gzip, diff) = tar.into_inner().map_err(io)?.finish();
        let (buffered, blob) = gzip.finish().map_err(io)?.finish();
        buffered
            .into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        let path = self.blob_path(&blob.digest);
        std::fs::rename(&partial, &path).map_err(|e| ImageError::io(&path, e))?;
        Ok(Layer {
            blob,
            diff_id: diff.digest,
        })
    }

    /// Writes the config, the manifest and index.json for an image of the one `layer`,
    /// named `reference`; returns the manifest's blob.
    pub fn finish(
        self,
        arch: Arch,
        layer: &Layer,
        env: &[&str],
        reference: &str,
    ) -> Result<Blob, ImageError> {
        let oci_arch = match arch {
            Arch::Amd64 => OciArch::Amd64,
            Arch::Arm64 => OciArch::ARM64,
        };
        let config = ImageConfigurationBuilder::default()
            .architecture(oci_arch.clone())
            .os(Os::Linux)
            .config(
                ConfigBuilder::default()
                    .env(env.iter().map(|e| e.to_string()).collect::<Vec<_>>())
                    .build()?,
            )
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![layer.diff_id.clone()])
                    .build()?,
            )
            .build()?;
        let config_blob = self.write_blob(&canonical_json(&config)?)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(MediaType::ImageConfig, &config_blob)?)
            .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer.blob)?])
            .build()?;
        let manifest_blob = self.write_blob(&canonical_json(&manifest)?)?;
        let mut manifest_descriptor = descriptor(MediaType::ImageManifest, &manifest_blob)?;
        manifest_descriptor.set_platform(Some(
            PlatformBuilder::default()
                .architecture(oci_arch)
                .os(Os::Linux)
                .build()?,
        ));
        manifest_descriptor.set_annotations(Some(
            [ANNOTATION_REF_NAME, ANNOTATION_CONTAINERD_NAME]
                .into_iter()
                .map(|k| (k.to_string(), reference.to_string()))
                .collect(),
        ));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![manifest_descriptor])
            .build()?;
        write_file(&self.dir.join("index.json"), &canonical_json(&index)?)?;
        Ok(manifest_blob)
    }
}

fn descriptor(media_type: MediaType, blob: &Blob) -> Result<Descriptor, ImageError> {
    let hex = blob.digest.strip_prefix("sha256:").unwrap_or(&blob.digest);
    let digest: Sha256Digest = hex.parse()?;
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(blob.size)
        .build()?)
}

/// JSON with every object's keys sorted (serde_json's map is ordered), so annotation maps,
/// which are HashMaps in oci-spec, serialize the same way on every run.
fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    let value = serde_json::to_value(value).map_err(oci_spec::OciSpecError::from)?;
    Ok(serde_json::to_vec(&value).map_err(oci_spec::OciSpecError::from)?)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    std::fs::write(path, bytes).map_err(|e| ImageError::io(path, e))
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    entry: &Entry,
    epoch: u64,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(epoch);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mode(entry.mode);
    header.set_size(0);
    match &entry.kind {
        Kind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut header, path, std::io::empty())
        }
        Kind::File(source) => {
            let file = std::fs::File::open(source)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(file.metadata()?.len());
            tar.append_data(&mut header, path, std::io::BufReader::new(file))
        }
        Kind::Bytes(bytes) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, path, bytes.as_slice())
        }
        Kind::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut header, path, target)
        }
        Kind::HardLink(target) => {
            header.set_entry_type(tar::EntryType::Link);
            tar.append_link(&mut header, path, target)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_parent_directories_are_added_once() {
        let mut tree = Tree::new();
        tree.insert("var".into(), Entry::root(Kind::Dir, 0o700));
        add_directories(&mut tree, "var/spool/postfix", 0o750);
        assert_eq!(tree["var"].mode, 0o700, "an existing directory is kept");
        assert_eq!(tree["var/spool"].mode, 0o755);
        assert_eq!(tree["var/spool/postfix"].mode, 0o750);
        assert_eq!(tree.len(), 3);
    }

    #[test]
    fn a_layer_keeps_hard_links_symlinks_modes_and_is_the_same_for_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree_dir = dir.path().join("tree");
        std::fs::create_dir_all(tree_dir.join("usr/sbin")).unwrap();
        std::fs::write(tree_dir.join("usr/sbin/smtp"), "elf").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tree_dir.join("usr/sbin/smtp"),
            std::fs::Permissions::from_mode(0o2755),
        )
        .unwrap();
        std::fs::hard_link(
            tree_dir.join("usr/sbin/smtp"),
            tree_dir.join("usr/sbin/lmtp"),
        )
        .unwrap();
        std::os::unix::fs::symlink("usr/sbin", tree_dir.join("sbin")).unwrap();
        std::fs::write(tree_dir.join("usr/skip-me"), "").unwrap();
        let tree = scan(&tree_dir, &|p| p != "usr/skip-me").unwrap();
        assert_eq!(
            tree.keys().collect::<Vec<_>>(),
            ["sbin", "usr", "usr/sbin", "usr/sbin/lmtp", "usr/sbin/smtp"]
        );
        // The first path in tar order holds the data; the other one links to it.
        assert_eq!(
            tree["usr/sbin/smtp"].kind,
            Kind::HardLink("usr/sbin/lmtp".into())
        );

        let write = |name: &str| {
            let layout = Layout::create(&dir.path().join(name)).unwrap();
            layout.write_layer(&tree, 1_700_000_000).unwrap()
        };
        let (first, second) = (write("a"), write("b"));
        assert_eq!(first.blob, second.blob);
        let gz = std::fs::read(
            dir.path()
                .join("a/blobs/sha256")
                .join(&first.blob.digest[7..]),
        )
        .unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
        let entries: Vec<(String, tar::EntryType, u64, u64, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].1, tar::EntryType::Symlink);
        assert_eq!(
            (entries[3].1, entries[3].4),
            (tar::EntryType::Regular, 0o2755)
        );
        assert_eq!(entries[4].1, tar::EntryType::Link);
        assert!(entries.iter().all(|e| e.2 == 1_700_000_000 && e.3 == 0));
    }
}
