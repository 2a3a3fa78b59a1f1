//! The content hash of a function: SHA-256 over its code tree and layers
//! (relative paths and file contents, in sorted order) plus handler,
//! runtime, image and environment. Equal inputs give the same hash in every
//! build and on every machine; editing a handler file changes it, so the
//! docker runtime's Adopt & Sync never keeps a worker running old code.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Everything a worker's behaviour depends on.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// The code directory (or image build context).
    pub code_dir: &'a Path,
    /// Layer content directories, in the function's order.
    pub layers: &'a [&'a Path],
    /// `Handler`.
    pub handler: &'a str,
    /// `Runtime`.
    pub runtime: &'a str,
    /// Image reference for image functions.
    pub image: &'a str,
    /// The full environment the worker gets.
    pub environment: &'a BTreeMap<String, String>,
}

/// Folders a code tree never ships (caches ESB or tools write beside the
/// code); skipping them keeps the hash stable across runs.
const SKIPPED: &[&str] = &["__pycache__", ".git", "node_modules/.cache"];

/// The hex SHA-256 of the input. Unreadable files count with their error
/// kind, so the hash still changes when they become readable.
pub fn code_hash(input: &HashInput<'_>) -> String {
    let mut h = Sha256::new();
    field(&mut h, b"handler", input.handler.as_bytes());
    field(&mut h, b"runtime", input.runtime.as_bytes());
    field(&mut h, b"image", input.image.as_bytes());
    for (k, v) in input.environment {
        field(&mut h, b"env", k.as_bytes());
        field(&mut h, b"=", v.as_bytes());
    }
    tree(&mut h, b"code", input.code_dir);
    for layer in input.layers {
        tree(&mut h, b"layer", layer);
    }
    hex::encode(h.finalize())
}

/// A length-prefixed field, so `("ab","c")` and `("a","bc")` differ.
fn field(h: &mut Sha256, tag: &[u8], bytes: &[u8]) {
    h.update((tag.len() as u64).to_le_bytes());
    h.update(tag);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn tree(h: &mut Sha256, tag: &[u8], root: &Path) {
    field(h, tag, root.as_os_str().as_encoded_bytes());
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    for rel in files {
        let path = root.join(&rel);
        field(h, b"file", rel.as_os_str().as_encoded_bytes());
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                h.update(b"content");
                h.update(len.to_le_bytes());
                let mut buf = [0u8; 64 * 1024];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => h.update(&buf[..n]),
                        Err(e) => {
                            field(h, b"error", format!("{:?}", e.kind()).as_bytes());
                            break;
                        }
                    }
                }
            }
            Err(e) => field(h, b"error", format!("{:?}", e.kind()).as_bytes()),
        }
    }
}

/// Relative paths of the regular files under `dir` (symlinks followed to
/// files; directory symlinks are not descended, so a loop cannot hang).
fn walk(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if SKIPPED.iter().any(|s| rel.ends_with(s)) {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(root, &path, out);
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            out.push(rel.to_path_buf());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(dir: &Path, env: &BTreeMap<String, String>) -> String {
        code_hash(&HashInput {
            code_dir: dir,
            layers: &[],
            handler: "app.handler",
            runtime: "python3.11",
            image: "",
            environment: env,
        })
    }

    #[test]
    fn editing_a_handler_file_changes_the_hash_and_nothing_else_does() {
        let dir = std::env::temp_dir().join(format!("esb-hash-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("pkg/__pycache__")).unwrap();
        std::fs::write(dir.join("app.py"), "def handler(e, c):\n    return 1\n").unwrap();
        std::fs::write(dir.join("pkg/util.py"), "X = 1\n").unwrap();
        let env = BTreeMap::new();
        let first = hash(&dir, &env);
        assert_eq!(first.len(), 64, "hex SHA-256");
        assert_eq!(first, hash(&dir, &env), "same content, same hash");
        // A cache written beside the code does not count.
        std::fs::write(dir.join("pkg/__pycache__/util.pyc"), "junk").unwrap();
        assert_eq!(first, hash(&dir, &env));
        // An edit to the handler (same length) changes it.
        std::fs::write(dir.join("app.py"), "def handler(e, c):\n    return 2\n").unwrap();
        let edited = hash(&dir, &env);
        assert_ne!(first, edited);
        // So does a new file in a sub-folder, a renamed file and the env.
        std::fs::write(dir.join("pkg/new.py"), "").unwrap();
        let added = hash(&dir, &env);
        assert_ne!(edited, added);
        std::fs::rename(dir.join("pkg/new.py"), dir.join("pkg/other.py")).unwrap();
        assert_ne!(added, hash(&dir, &env));
        let env2 = BTreeMap::from([("K".to_string(), "V".to_string())]);
        assert_ne!(hash(&dir, &env), hash(&dir, &env2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_layer_edit_changes_the_hash() {
        let root = std::env::temp_dir().join(format!("esb-hash-l-{}", uuid::Uuid::new_v4()));
        let (code, layer) = (root.join("code"), root.join("layer"));
        std::fs::create_dir_all(layer.join("python")).unwrap();
        std::fs::create_dir_all(&code).unwrap();
        std::fs::write(layer.join("python/lib.py"), "A = 1\n").unwrap();
        let env = BTreeMap::new();
        let with = |layers: &[&Path]| {
            code_hash(&HashInput {
                code_dir: &code,
                layers,
                handler: "h",
                runtime: "r",
                image: "",
                environment: &env,
            })
        };
        let before = with(&[&layer]);
        assert_ne!(before, with(&[]));
        std::fs::write(layer.join("python/lib.py"), "A = 2\n").unwrap();
        assert_ne!(before, with(&[&layer]));
        let _ = std::fs::remove_dir_all(&root);
    }
}
