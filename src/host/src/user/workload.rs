//! The busybox workload of `make user-check`: deterministic inputs and the applet runs.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The busybox the workload runs (Debian package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
/// The size every generated input reaches at least.
pub const INPUT_BYTES: usize = 1 << 20;

/// One applet invocation: its label and arguments after `busybox`; `{in}` stands for the
/// text input, which every run also gets as stdin (for filters such as `tr`).
pub struct Applet {
    pub label: &'static str,
    pub args: &'static [&'static str],
}

pub const APPLETS: &[Applet] = &[
    Applet { label: "sha256sum", args: &["sha256sum", "{in}"] },
    Applet { label: "md5sum", args: &["md5sum", "{in}"] },
    Applet { label: "gzip -c", args: &["gzip", "-c", "{in}"] },
    Applet { label: "sort", args: &["sort", "{in}"] },
    Applet { label: "sort -k3,3n", args: &["sort", "-k3,3n", "-k1,1", "{in}"] },
    Applet { label: "sed", args: &["sed", "-e", r"s/\([a-z]*\)o\([a-z]*\)/\2<\1>/g", "{in}"] },
    Applet {
        label: "awk",
        args: &["awk", "{ w[$1]++; n += $3 } END { for (k in w) if (w[k] > m) { m = w[k]; b = k }; print NR, n, b, m }", "{in}"],
    },
    Applet { label: "bzip2 -c", args: &["bzip2", "-c", "{in}"] },
    Applet { label: "sha512sum", args: &["sha512sum", "{in}"] },
    Applet { label: "sha1sum", args: &["sha1sum", "{in}"] },
    Applet { label: "grep -c", args: &["grep", "-c", "o[a-z]*ka", "{in}"] },
    Applet { label: "cut -f2", args: &["cut", "-d", " ", "-f2", "{in}"] },
    Applet { label: "uniq -c", args: &["uniq", "-c", "{in}"] },
    Applet { label: "wc", args: &["wc", "{in}"] },
    Applet { label: "base64", args: &["base64", "{in}"] },
    Applet { label: "tr (stdin)", args: &["tr", "a-z", "A-Z"] },
];

/// The guest environment, the same for native and translated runs.
pub fn env() -> Vec<Vec<u8>> {
    vec![b"LC_ALL=C".to_vec(), b"PATH=/usr/bin:/bin".to_vec()]
}

impl Applet {
    /// Full argv (argv[0] = busybox's path) with `{in}` replaced by `input`.
    pub fn argv(&self, input: &Path) -> Vec<Vec<u8>> {
        let input = input.as_os_str().as_encoded_bytes();
        let mut argv = vec![BUSYBOX.as_bytes().to_vec()];
        argv.extend(self.args.iter().map(|a| {
            if *a == "{in}" {
                input.to_vec()
            } else {
                a.as_bytes().to_vec()
            }
        }));
        argv
    }
}

/// Lines of "word word number" from a fixed linear congruential generator: the same bytes
/// on every machine, varied enough for sort, sed and awk, compressible enough for gzip.
pub fn sample_text(min_bytes: usize) -> Vec<u8> {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "so", "tu", "ra", "vo", "xi", "be", "do", "fu", "go", "hi", "jo",
        "pe",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut out = Vec::with_capacity(min_bytes + 64);
    while out.len() < min_bytes {
        for _ in 0..2 {
            for _ in 0..1 + next() % 4 {
                out.extend_from_slice(SYLLABLES[next() % SYLLABLES.len()].as_bytes());
            }
            out.push(b' ');
        }
        writeln!(out, "{}", next() % 100_000).expect("writing to a Vec");
    }
    out
}

/// Writes the text input under `dir` unless an identical one is there; returns its path.
pub fn prepare_input(dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("input.txt");
    let text = sample_text(INPUT_BYTES + INPUT_BYTES / 4);
    if std::fs::read(&path).ok().as_deref() != Some(&text[..]) {
        std::fs::write(&path, &text)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_text_is_deterministic_and_large_enough() {
        let a = sample_text(INPUT_BYTES);
        assert!(a.len() >= INPUT_BYTES);
        assert_eq!(a, sample_text(INPUT_BYTES));
        assert!(a.ends_with(b"\n"));
        let lines = a.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        assert!(lines.clone().all(|l| l.split(|&b| b == b' ').count() == 3));
        assert!(lines.collect::<std::collections::HashSet<_>>().len() > 10_000);
    }

    #[test]
    fn argv_substitutes_the_input_path() {
        let argv = APPLETS[0].argv(Path::new("/tmp/x"));
        assert_eq!(
            argv,
            vec![
                b"/bin/busybox".to_vec(),
                b"sha256sum".to_vec(),
                b"/tmp/x".to_vec()
            ]
        );
    }
}
