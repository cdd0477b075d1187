//! A directory of manifests standing in for the API server: every `*.yaml`, `*.yml` and
//! `*.json` file, each holding Services and EndpointSlices as multi-document YAML or as a
//! `kind: List` (what `kubectl get svc,endpointslices -A -o yaml` prints).
//!
//! The directory is polled: a change is picked up within one poll interval. A file that
//! cannot be read or parsed is reported and its last good contents are kept, so a
//! half-saved edit never takes services away.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::de::DeserializeSeed as _;
use tracing::{debug, warn};

mod document;

use super::{
    ObjectSet, admission,
    reduced::{NodeObject, ServiceObject, SliceObject},
    shared::Shared,
};
use crate::logging::Chain;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest directory {dir}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {document} is not valid YAML or JSON: {message}")]
    Syntax {
        path: PathBuf,
        document: usize,
        message: String,
    },
}

/// One object found in a file, reduced to what the agent uses of it, or why it could not
/// be used. Kept small (24 bytes, every variant boxed): a file's cache holds one for each
/// of its objects, 200,000 for 100,000 Services.
#[derive(Debug)]
pub enum Parsed {
    Service(Box<ServiceObject>),
    EndpointSlice(Box<SliceObject>),
    Node(Box<NodeObject>),
    /// Another kind (a Deployment in the same file, say): not ours, ignored.
    Other {
        kind: Box<str>,
    },
    Invalid(Box<Invalid>),
}

const _: () = assert!(std::mem::size_of::<Parsed>() <= 24);

/// A Service or EndpointSlice that does not deserialize (a port that is not a number, a
/// missing name...), or that the API server would refuse.
#[derive(Debug)]
pub struct Invalid {
    /// The object, named as well as the document allows.
    pub object: String,
    pub reason: String,
}

/// Parses the text of one file into the objects it holds. A list's items are parsed and
/// reduced one at a time as they stream past ([`document`]): a list can hold a whole
/// cluster, and is never held whole. A `.json` file is read as JSON, without the YAML
/// parser's buffering of every token (as YAML if it is not JSON).
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<Parsed>, ManifestError> {
    if path.extension().is_some_and(|e| e == "json") {
        let mut out = Vec::new();
        let mut json = serde_json::Deserializer::from_str(text);
        if document::Seed(&mut out)
            .deserialize(&mut json)
            .and_then(|()| json.end())
            .is_ok()
        {
            return Ok(out);
        }
    }
    let mut out = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        document::Seed(&mut out)
            .deserialize(document)
            .map_err(|e| ManifestError::Syntax {
                path: path.to_owned(),
                document: index + 1,
                message: e.to_string(),
            })?;
    }
    Ok(out)
}

/// The objects of one document (or list item) held as a value.
fn collect(value: yaml_serde::Value, out: &mut Vec<Parsed>) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_owned();
    match kind.as_str() {
        "List" | "ServiceList" | "EndpointSliceList" => {
            // Taken apart rather than cloned: a list can hold a whole cluster.
            if let yaml_serde::Value::Mapping(mut list) = value
                && let Some(yaml_serde::Value::Sequence(items)) = list.remove("items")
            {
                for item in items {
                    collect(item, out);
                }
            }
        }
        "Service" => out.push(typed(
            "Service",
            value,
            admission::check_service,
            |s: Service| Parsed::Service(Box::new(ServiceObject::from(s))),
        )),
        "EndpointSlice" => out.push(typed(
            "EndpointSlice",
            value,
            admission::check_slice,
            |s: EndpointSlice| Parsed::EndpointSlice(Box::new(SliceObject::from(s))),
        )),
        "Node" => out.push(typed(
            "Node",
            value,
            |_| Ok::<(), std::convert::Infallible>(()),
            |n: Node| Parsed::Node(Box::new(NodeObject::from(&n))),
        )),
        _ => out.push(Parsed::Other { kind: kind.into() }),
    }
}

/// One object of `kind`: deserialized, checked as the API server would, and reduced; or
/// named with what is wrong with it.
fn typed<K: serde::de::DeserializeOwned, E: std::fmt::Display>(
    kind: &str,
    value: yaml_serde::Value,
    check: impl FnOnce(&K) -> Result<(), E>,
    reduce: impl FnOnce(K) -> Parsed,
) -> Parsed {
    // Named before the value is consumed, in case it turns out not to parse.
    let object = describe(kind, &value);
    match yaml_serde::from_value::<K>(value) {
        Ok(k) => match check(&k) {
            Ok(()) => reduce(k),
            Err(refusal) => invalid(object, refusal),
        },
        Err(e) => invalid(object, e),
    }
}

/// An object named as well as it can be (its name escaped: it may be what is wrong), for
/// when it does not parse or the API server would have refused it.
fn describe(kind: &str, value: &yaml_serde::Value) -> String {
    let meta = value.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|v| v.as_str())
            .map(admission::escape)
    };
    format!(
        "{kind} {}/{}",
        field("namespace").unwrap_or_else(|| "default".into()),
        field("name").unwrap_or_else(|| "<unnamed>".into())
    )
}

fn invalid(object: String, error: impl std::fmt::Display) -> Parsed {
    Parsed::Invalid(Box::new(Invalid {
        object,
        reason: error.to_string(),
    }))
}

/// What identifies a file's contents without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    inode: u64,
}

struct CachedFile {
    stamp: Stamp,
    objects: Vec<Parsed>,
}

/// The manifest directory and what was last read from each file.
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, CachedFile>,
    polled: bool,
}

/// Result of a poll: whether anything changed since the last poll, and if so (or on the
/// first poll) the objects now known. Merging every file's objects costs as much as the
/// objects are many, so an unchanged directory is not merged again.
pub struct Snapshot {
    pub objects: Option<ObjectSet>,
    pub changed: bool,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            polled: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the files whose size, mtime or inode changed and returns the merged set.
    /// Problems are logged and the previous contents of the affected file kept.
    pub fn poll(&mut self) -> Result<Snapshot, ManifestError> {
        let present = self.list()?;
        let mut changed = false;
        self.files.retain(|path, _| {
            let keep = present.contains_key(path);
            if !keep {
                debug!(file = %path.display(), "manifest file removed");
                changed = true;
            }
            keep
        });
        for (path, stamp) in present {
            if self.files.get(&path).is_some_and(|c| c.stamp == stamp) {
                continue;
            }
            changed = true;
            match read_file(&path) {
                Ok(objects) => {
                    report_invalid(&path, &objects);
                    self.files.insert(path, CachedFile { stamp, objects });
                }
                Err(error) => {
                    let kept = self.files.contains_key(&path);
                    let what = if kept {
                        "keeping the file's last good contents"
                    } else {
                        "file skipped"
                    };
                    warn!("{}; {what}", Chain(&error));
                    // Remember the stamp so the same broken file is not reported every poll.
                    let objects = self
                        .files
                        .remove(&path)
                        .map(|c| c.objects)
                        .unwrap_or_default();
                    self.files.insert(path, CachedFile { stamp, objects });
                }
            }
        }
        let first = !std::mem::replace(&mut self.polled, true);
        Ok(Snapshot {
            objects: (changed || first).then(|| self.merged()),
            changed,
        })
    }

    fn list(&self) -> Result<BTreeMap<PathBuf, Stamp>, ManifestError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| ManifestError::ReadDir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut out = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let is_manifest = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            // Editors' temporary files (.web.yaml.swp, web.yaml~) do not match the extensions.
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !is_manifest || hidden {
                continue;
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let stamp = Stamp {
                len: meta.len(),
                mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                inode: meta.ino(),
            };
            out.insert(path, stamp);
        }
        Ok(out)
    }

    fn merged(&self) -> ObjectSet {
        let mut set = ObjectSet::default();
        for (path, file) in &self.files {
            for object in &file.objects {
                match object {
                    Parsed::Service(s) => {
                        let key = s.key.clone();
                        if set.services.insert(key.clone(), (**s).clone()).is_some() {
                            warn!(service = %key, file = %path.display(), "Service defined twice; the later file wins");
                        }
                    }
                    Parsed::EndpointSlice(s) => {
                        let key = s.key.clone();
                        if set
                            .endpoint_slices
                            .insert(key.clone(), (**s).clone())
                            .is_some()
                        {
                            warn!(endpointslice = %key, file = %path.display(), "EndpointSlice defined twice; the later file wins");
                        }
                    }
                    Parsed::Node(n) => {
                        set.nodes.insert(n.name.clone(), n.input.clone());
                    }
                    Parsed::Other { .. } | Parsed::Invalid(_) => {}
                }
            }
        }
        set
    }
}

fn read_file(path: &Path) -> Result<Vec<Parsed>, ManifestError> {
    let text = fs::read_to_string(path).map_err(|source| ManifestError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let mut objects = parse_documents(path, &text)?;
    // Cached until the file changes.
    objects.shrink_to_fit();
    Ok(objects)
}

fn report_invalid(path: &Path, objects: &[Parsed]) {
    for object in objects {
        match object {
            Parsed::Invalid(invalid) => {
                let Invalid { object, reason } = &**invalid;
                warn!(file = %path.display(), object = %object, reason = %reason, "object skipped: it does not parse, or the API server would refuse it");
            }
            Parsed::Other { kind } => {
                debug!(file = %path.display(), kind = %kind, "ignoring object of another kind");
            }
            _ => {}
        }
    }
}

/// Every object in `text` (one manifest file's contents), for tests of what comes after
/// the source.
#[cfg(test)]
pub(crate) fn object_set(text: &str) -> ObjectSet {
    let mut set = ObjectSet::default();
    for parsed in parse_documents(Path::new("test.yaml"), text).expect("test manifests parse") {
        match parsed {
            Parsed::Service(s) => {
                set.services.insert(s.key.clone(), *s);
            }
            Parsed::EndpointSlice(s) => {
                set.endpoint_slices.insert(s.key.clone(), *s);
            }
            Parsed::Node(n) => {
                set.nodes.insert(n.name, n.input);
            }
            other => panic!("unexpected object in a test manifest: {other:?}"),
        }
    }
    set
}

/// Polls a manifest directory into the store every `poll`, forever.
pub async fn watch(
    mut dir: ManifestDir,
    shared: std::sync::Arc<Shared>,
    poll: std::time::Duration,
) {
    let mut first = true;
    let mut tick = tokio::time::interval(poll);
    loop {
        tick.tick().await;
        match dir.poll() {
            Ok(Snapshot {
                objects: Some(objects),
                ..
            }) => {
                shared.update(|store| store.replace_all(objects));
                if first {
                    shared.listed();
                    first = false;
                }
            }
            Ok(_) => {}
            // The directory vanished or is unreadable: keep serving what is installed.
            Err(e) => warn!("{}; keeping the installed state", Chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Parsed> {
        parse_documents(Path::new("test.yaml"), text).expect("parses")
    }

    #[test]
    fn multi_document_yaml() {
        let objects = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {clusterIP: 198.19.0.1}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a-1, namespace: x}\naddressType: IPv4\nendpoints: []\n---\n",
        );
        assert!(matches!(objects[0], Parsed::Service(_)));
        assert!(matches!(objects[1], Parsed::EndpointSlice(_)));
        assert_eq!(objects.len(), 2);
    }

    #[test]
    fn kubectl_list_in_json() {
        let objects = parse(
            r#"{"apiVersion":"v1","kind":"List","items":[
                {"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"198.19.0.1"}},
                {"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"}}]}"#,
        );
        assert!(matches!(objects[0], Parsed::Service(_)));
        assert!(matches!(&objects[1], Parsed::Other { kind } if &**kind == "Deployment"));
    }

    #[test]
    fn invalid_object_is_named() {
        let objects = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: eighty}]}\n",
        );
        match &objects[0] {
            Parsed::Invalid(invalid) => {
                assert_eq!(invalid.object, "Service shop/web");
                assert!(invalid.reason.contains("invalid"), "{}", invalid.reason);
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn objects_the_api_server_would_refuse_claim_nothing() {
        let good = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}\n";
        let mut text = good.to_owned();
        for name in [
            "\"\"",
            "None",
            "\"0.0.0.0\"",
            "\"web\\u202E\"",
            "\"a\\e[2J\"",
        ] {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{clusterIP: 198.19.0.10, ports: [{{port: 80}}]}}\n"
            ));
        }
        text.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: demo}\nspec: {clusterIP: 198.19.0.11, clusterIPs: [bogus], ports: [{port: 80}]}\n");
        let objects = parse(&text);
        let services = objects
            .iter()
            .filter(|o| matches!(o, Parsed::Service(_)))
            .count();
        assert_eq!(
            services, 1,
            "only the good Service gets through: {objects:?}"
        );
        let refusals: Vec<(&str, &str)> = objects
            .iter()
            .filter_map(|o| match o {
                Parsed::Invalid(invalid) => {
                    Some((invalid.object.as_str(), invalid.reason.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(refusals.len(), 6, "{refusals:?}");
        for (object, reason) in &refusals[..5] {
            assert!(reason.starts_with("metadata.name: "), "{object}: {reason}");
            assert!(
                !object.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "{object:?}"
            );
        }
        assert_eq!(refusals[3].0, "Service demo/web\\u{202e}");
        assert_eq!(
            refusals[5],
            (
                "Service demo/other",
                "spec.clusterIPs[0]: \"bogus\" differs from spec.clusterIP \"198.19.0.11\": the API server requires them equal"
            )
        );
    }

    #[test]
    fn syntax_error_names_file_and_document() {
        let err = parse_documents(Path::new("bad.yaml"), "kind: Service\n---\nkind: [\n")
            .expect_err("must fail");
        let text = err.to_string();
        assert!(text.starts_with("bad.yaml: document 2"), "{text}");
    }

    #[test]
    fn broken_edit_keeps_last_good_contents() {
        let dir = std::env::temp_dir().join(format!("epx-manifest-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("svc.yaml");
        fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 198.19.0.1}\n",
        )
        .expect("write");
        let mut source = ManifestDir::new(&dir);
        let first = source.poll().expect("poll");
        assert!(first.changed);
        assert_eq!(first.objects.expect("first poll").services.len(), 1);
        let again = source.poll().expect("poll");
        assert!(!again.changed && again.objects.is_none(), "nothing changed");
        fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: a\n").expect("write");
        let broken = source.poll().expect("poll");
        assert_eq!(
            broken.objects.expect("changed").services.len(),
            1,
            "last good contents kept"
        );
        fs::remove_file(&file).expect("rm");
        assert!(
            source
                .poll()
                .expect("poll")
                .objects
                .expect("changed")
                .services
                .is_empty()
        );
        fs::remove_dir_all(&dir).expect("rmdir");
    }
}
