//! The onnxruntime shared library and the sessions made with it.
//!
//! `ort` loads `libonnxruntime.so` at run time (`load-dynamic`): nothing is
//! downloaded at build or run time. The library comes from the pinned
//! `onnxruntime` wheel in the repository's `.venv`. Where it is looked for,
//! first match wins:
//!
//! 1. the path in the config (`ort_dylib`), alone if set;
//! 2. else `ORT_DYLIB_PATH`, alone if set;
//! 3. else `<repo>/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`,
//!    `<repo>` being each ancestor of the model directory's parent, then each
//!    ancestor of the current directory.
//!
//! A process can load the library and create ort's environment once only, so
//! the outcome of the first load, success or failure, is kept for the life of
//! the process ([`Runtime::load`]); a path that does not exist is refused
//! before any load and is not kept.

use std::ffi::OsString;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::Tensor;

use crate::error::ModelError;
use crate::features::FEATURE_COUNT;

/// Environment variable naming the library, as `ort` itself reads it.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Most rows one session call takes.
pub const SESSION_ROWS_MAX: usize = 4_096;

/// The loaded library and ort's process-wide environment.
pub struct Runtime {
    dylib: PathBuf,
    environment: ort::environment::Environment,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("dylib", &self.dylib).finish_non_exhaustive()
    }
}

/// The first load's outcome: the runtime, or which library failed and why.
type LoadOutcome = Result<Arc<Runtime>, (PathBuf, String)>;

static RUNTIME: OnceLock<LoadOutcome> = OnceLock::new();

impl Runtime {
    /// Finds the library (see the module documentation) without loading it.
    /// `env_value` is the value of [`ORT_DYLIB_ENV`]; `cwd` the current
    /// directory.
    pub fn discover(explicit: Option<&Path>, env_value: Option<OsString>, model_dir: &Path, cwd: Option<&Path>) -> Result<PathBuf, ModelError> {
        if let Some(path) = explicit {
            return existing(path);
        }
        if let Some(value) = env_value.filter(|v| !v.is_empty()) {
            return existing(Path::new(&value));
        }
        let mut roots: Vec<PathBuf> = Vec::new();
        let model_dir = model_dir.canonicalize().unwrap_or_else(|_| model_dir.to_owned());
        let starts = [model_dir.parent().map(Path::to_path_buf), cwd.map(Path::to_path_buf)];
        for start in starts.into_iter().flatten() {
            for ancestor in start.ancestors() {
                if !roots.iter().any(|r| r == ancestor) {
                    roots.push(ancestor.to_owned());
                }
            }
        }
        let mut tried = Vec::new();
        for root in &roots {
            let lib = root.join(".venv").join("lib");
            tried.push(lib.join("python3*/site-packages/onnxruntime/capi/libonnxruntime.so*"));
            if let Some(found) = find_in_venv_lib(&lib) {
                return Ok(found);
            }
        }
        Err(ModelError::RuntimeNotFound { tried })
    }

    /// Discovers with this process's environment and current directory.
    pub fn discover_here(explicit: Option<&Path>, model_dir: &Path) -> Result<PathBuf, ModelError> {
        let cwd = std::env::current_dir().ok();
        Self::discover(explicit, std::env::var_os(ORT_DYLIB_ENV), model_dir, cwd.as_deref())
    }

    /// Loads the library at `dylib` and creates ort's environment, once per
    /// process. A later call gets the first outcome: the same runtime if it
    /// names the same file, else an error naming both.
    pub fn load(dylib: &Path) -> Result<Arc<Runtime>, ModelError> {
        let requested = dylib.canonicalize().map_err(|_| ModelError::RuntimeNotFound { tried: vec![dylib.to_owned()] })?;
        let outcome = RUNTIME.get_or_init(|| Self::init(&requested));
        match outcome {
            Ok(runtime) if runtime.dylib == requested => Ok(Arc::clone(runtime)),
            Ok(runtime) => Err(ModelError::RuntimeConflict { loaded: runtime.dylib.clone(), requested }),
            Err((failed, reason)) if *failed == requested => Err(ModelError::RuntimeLoad { dylib: failed.clone(), reason: reason.clone() }),
            Err((failed, reason)) => Err(ModelError::RuntimeLoad {
                dylib: requested,
                reason: format!("this process already failed to load onnxruntime from {}: {reason}", failed.display()),
            }),
        }
    }

    fn init(dylib: &Path) -> LoadOutcome {
        let fail = |reason: String| (dylib.to_owned(), reason);
        let builder = ort::init_from(dylib).map_err(|e| fail(e.to_string()))?;
        let environment = builder.with_name("stockd").with_telemetry(false).build().map_err(|e| fail(e.to_string()))?;
        tracing::info!(dylib = %dylib.display(), "loaded onnxruntime");
        Ok(Arc::new(Runtime { dylib: dylib.to_owned(), environment }))
    }

    /// The library this runtime was loaded from (canonical path).
    pub fn dylib(&self) -> &Path {
        &self.dylib
    }

    /// Creates a session for the ONNX model in `bytes` (read from `path`)
    /// whose float input `input` takes `[N, FEATURE_COUNT]` rows and whose
    /// float output `output` is `[N, 2]`, column 1 being P(sellable).
    pub fn session(&self, path: &Path, bytes: &[u8], input: &str, output: &str) -> Result<ModelSession, ModelError> {
        let failed = |reason: String| ModelError::Session { path: path.to_owned(), reason };
        // One thread per session: the models are small, a batch takes tens
        // of microseconds, and a thread pool would cost more than it saves.
        let session = Session::builder(&self.environment)
            .map_err(|e| failed(e.to_string()))?
            .with_intra_threads(1)
            .map_err(|e| failed(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| failed(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(|e| failed(e.to_string()))?;
        let signature = |reason: String| ModelError::Signature { path: path.to_owned(), reason };
        if !session.inputs().iter().any(|i| i.name() == input) {
            let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
            return Err(signature(format!("no input named {input:?}; inputs are {names:?}")));
        }
        if !session.outputs().iter().any(|o| o.name() == output) {
            let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
            return Err(signature(format!("no output named {output:?}; outputs are {names:?}")));
        }
        Ok(ModelSession { session, input: input.to_owned(), output: output.to_owned() })
    }
}

fn existing(path: &Path) -> Result<PathBuf, ModelError> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(ModelError::RuntimeNotFound { tried: vec![path.to_owned()] })
    }
}

/// `<lib>/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`, the
/// lexicographically first match (a wheel holds one).
fn find_in_venv_lib(lib: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> =
        std::fs::read_dir(lib).ok()?.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("python3")).map(|e| e.path()).collect();
    pythons.sort();
    for python in pythons {
        let capi = python.join("site-packages").join("onnxruntime").join("capi");
        let Ok(entries) = std::fs::read_dir(&capi) else { continue };
        let mut libs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("libonnxruntime.so"))
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        libs.sort();
        if let Some(first) = libs.into_iter().next() {
            return Some(first);
        }
    }
    None
}

/// One ONNX model, ready to score batches. Not shared: a session is used by
/// one thread at a time (`run` takes `&mut self`).
pub struct ModelSession {
    session: Session,
    input: String,
    output: String,
}

impl std::fmt::Debug for ModelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSession").field("input", &self.input).field("output", &self.output).finish_non_exhaustive()
    }
}

impl ModelSession {
    /// Scores `rows` in one session call: the raw P(sellable) of each row,
    /// column 1 of the output, widened to f64.
    pub fn run(&mut self, rows: &[[f32; FEATURE_COUNT]]) -> Result<Vec<f64>, ModelError> {
        let n = rows.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > SESSION_ROWS_MAX {
            return Err(ModelError::Inference { reason: format!("{n} rows in one call, the limit is {SESSION_ROWS_MAX}") });
        }
        let failed = |reason: String| ModelError::Inference { reason };
        let data: Vec<f32> = rows.iter().flatten().copied().collect();
        let tensor = Tensor::from_array(([n, FEATURE_COUNT], data)).map_err(|e| failed(e.to_string()))?;
        let outputs = self.session.run(ort::inputs![self.input.as_str() => tensor]).map_err(|e| failed(e.to_string()))?;
        let value = outputs.get(&self.output).ok_or_else(|| failed(format!("no output {:?}", self.output)))?;
        let (shape, probabilities) = value.try_extract_tensor::<f32>().map_err(|e| failed(e.to_string()))?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        if dims != [n as i64, 2] || probabilities.len() != n * 2 {
            return Err(failed(format!("output {:?} has shape {dims:?}, expected [{n}, 2]", self.output)));
        }
        let raw: Vec<f64> = probabilities.chunks_exact(2).map(|pair| f64::from(pair[1])).collect();
        if let Some(i) = raw.iter().position(|p| !(0.0..=1.0).contains(p)) {
            return Err(failed(format!("row {i} has P(sellable) {}, not a probability", raw[i])));
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_venv(root: &Path, python: &str, lib: &str) -> PathBuf {
        let capi = root.join(".venv/lib").join(python).join("site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).expect("mkdir");
        let path = capi.join(lib);
        std::fs::write(&path, b"").expect("write");
        path
    }

    #[test]
    fn explicit_path_wins_and_is_not_replaced_when_missing() {
        let repo = tempfile::tempdir().expect("tempdir");
        let models = repo.path().join("models");
        std::fs::create_dir_all(&models).expect("mkdir");
        let in_venv = fake_venv(repo.path(), "python3.11", "libonnxruntime.so.1.32.0");
        let explicit = repo.path().join("custom.so");
        std::fs::write(&explicit, b"").expect("write");

        let found = Runtime::discover(Some(&explicit), Some("/elsewhere.so".into()), &models, None).expect("explicit exists");
        assert_eq!(found, explicit);
        let missing = repo.path().join("missing.so");
        let err = Runtime::discover(Some(&missing), None, &models, None).expect_err("explicit missing");
        assert!(err.to_string().contains("missing.so"), "{err}");

        let env_err = Runtime::discover(None, Some(missing.clone().into_os_string()), &models, None).expect_err("env missing");
        assert!(matches!(env_err, ModelError::RuntimeNotFound { ref tried } if tried == &vec![missing]), "{env_err}");
        let found = Runtime::discover(None, Some(explicit.clone().into_os_string()), &models, None).expect("env exists");
        assert_eq!(found, explicit);

        let found = Runtime::discover(None, None, &models, None).expect("venv of the model dir's repo");
        assert_eq!(found.canonicalize().expect("exists"), in_venv.canonicalize().expect("exists"));
    }

    #[test]
    fn searches_upward_from_the_current_directory_and_names_what_it_tried() {
        let repo = tempfile::tempdir().expect("tempdir");
        let nowhere = tempfile::tempdir().expect("tempdir");
        let deep = repo.path().join("a/b");
        std::fs::create_dir_all(&deep).expect("mkdir");
        let models = nowhere.path().join("models");

        let err = Runtime::discover(None, None, &models, Some(&deep)).expect_err("no venv yet");
        let message = err.to_string();
        assert!(message.contains(".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*"), "{message}");
        assert!(message.contains(&repo.path().join("a/.venv").display().to_string()), "{message}");

        let lib = fake_venv(repo.path(), "python3.12", "libonnxruntime.so.1.32.0");
        let found = Runtime::discover(None, None, &models, Some(&deep)).expect("found upward");
        assert_eq!(found, lib);
    }

    const CHILD_ENV: &str = "STOCKD_RUNTIME_FAILURE_CHILD";

    /// A failed load is kept for the process: it runs in a child process so
    /// that the failure does not reach the other tests of this binary.
    #[test]
    fn a_failed_load_is_kept_for_the_process() {
        let exe = std::env::current_exe().expect("test binary path");
        let output = std::process::Command::new(exe)
            .args(["--exact", "runtime::tests::failed_load_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .expect("run the child test");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("1 passed"), "the child test ran:\n{stdout}");
        assert!(stdout.contains("child checked the kept failure"), "{stdout}");
    }

    /// Body of the test above; does nothing unless started by it.
    #[test]
    fn failed_load_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("libonnxruntime.so");
        std::fs::write(&garbage, b"not a shared library").expect("write");
        let first = Runtime::load(&garbage).expect_err("garbage does not load");
        assert!(matches!(first, ModelError::RuntimeLoad { .. }), "{first}");
        let second = Runtime::load(&garbage).expect_err("still failed");
        assert_eq!(first.to_string(), second.to_string());
        let other = dir.path().join("other.so");
        std::fs::write(&other, b"").expect("write");
        let err = Runtime::load(&other).expect_err("no second attempt");
        assert!(err.to_string().contains("already failed to load onnxruntime"), "{err}");
        println!("child checked the kept failure");
    }

    #[test]
    fn a_missing_library_is_refused_before_loading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Runtime::load(&dir.path().join("libonnxruntime.so")).expect_err("missing");
        assert!(matches!(err, ModelError::RuntimeNotFound { .. }), "{err}");
    }
}
