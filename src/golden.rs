//! Golden files: the checked-in expected rendering of every artifact letterbox writes
//! (tests/golden/net, tests/golden/dns, tests/golden/mail, ...), compared by the unit and
//! integration tests through [`check`].
//!
//! `UPDATE_GOLDEN=1 cargo test FILTER` rewrites the golden files of the selected tests with
//! their rendering (review the change with `git diff tests/golden`). Any other value, `0` and
//! the empty string included, or none, compares: a difference fails the test with a line diff
//! and says how to update. `tests/run`, and so `make test`, refuses `UPDATE_GOLDEN=1`, so the
//! test suite never rewrites a golden file.
//!
//! Test support, public so that the integration tests can use it too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The environment variable that selects the [`Mode`].
pub const ENV: &str = "UPDATE_GOLDEN";

/// Whether a check compares with the golden file or rewrites it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Fail when the rendering differs from the golden file (or there is none).
    Compare,
    /// Write the rendering to the golden file.
    Update,
}

impl Mode {
    /// The mode `UPDATE_GOLDEN` selects in this process's environment.
    pub fn from_env() -> Mode {
        Mode::from_value(std::env::var(ENV).ok().as_deref())
    }

    /// The mode a value of `UPDATE_GOLDEN` selects: `Update` for exactly "1", `Compare`
    /// for anything else ("0", "", "true", unset, not UTF-8).
    pub fn from_value(value: Option<&str>) -> Mode {
        if value == Some("1") {
            Mode::Update
        } else {
            Mode::Compare
        }
    }
}

/// What a successful check did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The golden file already held the rendering (nothing was written).
    Matched,
    /// `Mode::Update` wrote the rendering to the golden file.
    Updated,
}

/// The directory of the golden files: tests/golden in the source tree.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Checks `rendered` against the golden file `name` (relative to tests/golden, e.g.
/// "net/hosts" or "dns/default.zone") in the mode `UPDATE_GOLDEN` selects; panics with a
/// diff and how to update when they differ.
#[track_caller]
pub fn check(name: &str, rendered: &str) {
    let path = dir().join(name);
    match check_in(Mode::from_env(), &path, rendered) {
        Ok(Outcome::Matched) => {}
        Ok(Outcome::Updated) => {
            // Past libtest's capture, so that the passing test still says it.
            let shown = shown_path(&path);
            let _ = writeln!(std::io::stderr(), "golden: rewrote {shown} ({ENV}=1)");
        }
        Err(mut message) => {
            if let Ok(value) = std::env::var(ENV) {
                let _ = write!(
                    message,
                    "\n({ENV}={value:?} compares: only {ENV}=1 rewrites golden files.)"
                );
            }
            panic!("{message}");
        }
    }
}

/// Checks `rendered` against the golden file at `path` in `mode`. `Compare` never writes:
/// a difference or a missing file is an error message with a diff (`-` golden, `+`
/// rendered) and the command that updates it. `Update` writes the file (and its directory)
/// unless it already holds the rendering.
pub fn check_in(mode: Mode, path: &Path, rendered: &str) -> Result<Outcome, String> {
    let shown = shown_path(path);
    let golden = std::fs::read_to_string(path);
    if let Ok(golden) = &golden {
        if golden == rendered {
            return Ok(Outcome::Matched);
        }
    }
    match (mode, golden) {
        (Mode::Update, _) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::write(path, rendered).map_err(|e| format!("{shown}: {e}"))?;
            Ok(Outcome::Updated)
        }
        (Mode::Compare, Err(e)) => Err(format!(
            "golden file {shown}: {e}\n{}",
            how_to_update(&shown)
        )),
        (Mode::Compare, Ok(golden)) => Err(format!(
            "golden file {shown} differs from the rendering (- golden, + rendered):\n{}\n{}",
            diff(&golden, rendered),
            how_to_update(&shown)
        )),
    }
}

/// The path relative to the source tree when it is inside it.
fn shown_path(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn how_to_update(shown: &str) -> String {
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(|name| name.rsplit("::").next().unwrap_or(name).to_string())
        .unwrap_or_else(|| "TEST_NAME".into());
    format!(
        "If the rendering is right, update the golden file with `{ENV}=1 cargo test {test}` \
         and review `git diff {shown}`. (tests/run and make test never update golden files.)"
    )
}

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Above this many cells the middle of the diff is not aligned, just shown as replaced.
const MAX_TABLE: usize = 4_000_000;
/// The diff is cut after this many lines.
const MAX_LINES: usize = 200;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// A unified-style line diff of `old` (`-`) and `new` (`+`): hunks with `CONTEXT` lines
/// around each change, headed by their line numbers. Trailing whitespace, carriage returns
/// and a missing final newline are made visible.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let ops = edit_script(&a, &b);

    // Mark what to print: every change and its context.
    let mut shown = vec![false; ops.len()];
    for (i, (op, _)) in ops.iter().enumerate() {
        if *op != Op::Same {
            let from = i.saturating_sub(CONTEXT);
            let to = (i + CONTEXT + 1).min(ops.len());
            shown[from..to].iter_mut().for_each(|s| *s = true);
        }
    }

    let mut out = String::new();
    let (mut line_a, mut line_b) = (1, 1);
    let mut printed = 0;
    let mut in_hunk = false;
    for (i, (op, line)) in ops.iter().enumerate() {
        if shown[i] {
            if !in_hunk {
                let _ = writeln!(out, "@@ golden line {line_a}, rendered line {line_b} @@");
                in_hunk = true;
            }
            if printed == MAX_LINES {
                let left = ops[i..].iter().filter(|(op, _)| *op != Op::Same).count();
                let _ = writeln!(out, "... diff cut short: {left} more changed lines");
                break;
            }
            let sign = match op {
                Op::Same => ' ',
                Op::Removed => '-',
                Op::Added => '+',
            };
            let _ = writeln!(out, "{sign}{}", visible(line));
            printed += 1;
        } else {
            in_hunk = false;
        }
        match op {
            Op::Same => {
                line_a += 1;
                line_b += 1;
            }
            Op::Removed => line_a += 1,
            Op::Added => line_b += 1,
        }
    }
    out
}

/// The shortest edit script between two line lists: a longest common subsequence over
/// what lies between their common prefix and suffix.
fn edit_script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Op, &'a str)> {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);

    let mut ops: Vec<(Op, &str)> = a[..prefix].iter().map(|l| (Op::Same, *l)).collect();
    if (ma.len() + 1) * (mb.len() + 1) > MAX_TABLE {
        ops.extend(ma.iter().map(|l| (Op::Removed, *l)));
        ops.extend(mb.iter().map(|l| (Op::Added, *l)));
    } else {
        // lcs[i][j]: the LCS length of ma[i..] and mb[j..].
        let width = mb.len() + 1;
        let mut lcs = vec![0u32; (ma.len() + 1) * width];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                lcs[i * width + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * width + j + 1] + 1
                } else {
                    lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() || j < mb.len() {
            if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
                ops.push((Op::Same, ma[i]));
                i += 1;
                j += 1;
            } else if j < mb.len()
                && (i == ma.len() || lcs[i * width + j + 1] >= lcs[(i + 1) * width + j])
            {
                ops.push((Op::Added, mb[j]));
                j += 1;
            } else {
                ops.push((Op::Removed, ma[i]));
                i += 1;
            }
        }
        // Removals before additions within each change reads better.
        for run in ops.chunk_by_mut(|x, y| x.0 != Op::Same && y.0 != Op::Same) {
            run.sort_by_key(|(op, _)| *op == Op::Added);
        }
    }
    ops.extend(a[a.len() - suffix..].iter().map(|l| (Op::Same, *l)));
    ops
}

/// A line without its newline, quoted when invisible characters would hide a difference.
fn visible(line: &str) -> String {
    let (text, newline) = match line.strip_suffix('\n') {
        Some(text) => (text, true),
        None => (line, false),
    };
    let hidden = text.ends_with([' ', '\t']) || text.chars().any(|c| c.is_control() && c != '\t');
    let mut out = if hidden {
        format!("{text:?}")
    } else {
        text.to_string()
    };
    if !newline {
        out.push_str("  (no newline at end of file)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_1_selects_update() {
        assert_eq!(Mode::from_value(Some("1")), Mode::Update);
        for value in [
            Some("0"),
            Some(""),
            Some("true"),
            Some("yes"),
            Some(" 1"),
            None,
        ] {
            assert_eq!(Mode::from_value(value), Mode::Compare, "{value:?}");
        }
    }

    #[test]
    fn update_golden_0_fails_on_a_difference_and_does_not_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        let message = check_in(Mode::from_value(Some("0")), &path, "one\nTWO\nthree\n")
            .expect_err("a difference must fail in compare mode");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
        assert!(message.contains("differs from the rendering"), "{message}");
        assert!(message.contains("\n-two\n+TWO\n"), "{message}");
        assert!(message.contains("UPDATE_GOLDEN=1 cargo test"), "{message}");
    }

    #[test]
    fn compare_passes_on_equal_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zone");
        std::fs::write(&path, "a\n").unwrap();
        assert_eq!(check_in(Mode::Compare, &path, "a\n"), Ok(Outcome::Matched));
    }

    #[test]
    fn compare_fails_on_a_missing_golden_without_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let message = check_in(Mode::Compare, &path, "a\n").unwrap_err();
        assert!(!path.exists());
        assert!(message.contains("UPDATE_GOLDEN=1"), "{message}");
    }

    #[test]
    fn update_writes_the_rendering_and_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail/main.cf");
        assert_eq!(check_in(Mode::Update, &path, "x\n"), Ok(Outcome::Updated));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x\n");
        assert_eq!(check_in(Mode::Update, &path, "x\n"), Ok(Outcome::Matched));
        assert_eq!(check_in(Mode::Compare, &path, "x\n"), Ok(Outcome::Matched));
    }

    #[test]
    fn diff_shows_only_the_changes_and_their_context() {
        let old: String = (1..=40).map(|n| format!("line {n}\n")).collect();
        let new = old
            .replace("line 10\n", "line ten\n")
            .replace("line 30\n", "")
            + "line 41\n";
        let d = diff(&old, &new);
        assert!(
            d.starts_with("@@ golden line 7, rendered line 7 @@\n line 7\n"),
            "{d}"
        );
        assert!(d.contains("-line 10\n+line ten\n line 11\n"), "{d}");
        assert!(d.contains("@@ golden line 27, rendered line 27 @@"), "{d}");
        assert!(d.contains(" line 29\n-line 30\n line 31\n"), "{d}");
        assert!(d.contains(" line 40\n+line 41\n"), "{d}");
        assert!(!d.contains("line 20"), "{d}");
    }

    #[test]
    fn diff_makes_invisible_differences_visible() {
        let d = diff("a\nb\n", "a\nb");
        assert!(d.contains("-b\n+b  (no newline at end of file)\n"), "{d}");
        let d = diff("a\n", "a \n");
        assert!(d.contains("-a\n+\"a \"\n"), "{d}");
        let d = diff("a\n", "a\r\n");
        assert!(d.contains("+\"a\\r\"\n"), "{d}");
    }
}
