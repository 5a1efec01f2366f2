//! The `normkit` command: `info`, `bench` and `bandwidth`.
//!
//! Arguments are parsed with `std::env::args` (a dozen flags do not justify a dependency).

use normkit::DType;
use normkit::backend::cpu::{simd_level, threads, threads::effective_threads};
use normkit::bench::device::{DevicePrepared, DeviceSpec, measure_device};
use normkit::bench::{Bandwidth, Case, Measurement, Prepared, Suite, bandwidth};
use normkit::device::{Device, DeviceRequest, Selection, select_device};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

const USAGE: &str = "usage:
  normkit info
  normkit bench [--device cpu|cuda|cuda:N|emu|auto] [--json] [--threads N]
                [--dtype f32|bf16|...] [--filter SUBSTR] [--reps N | --quick] [--warmup N]
                [--warmup-ms MS] [--max-elements N | --min-elements N] [--offset-bytes B]
                [--bandwidth] [--serve]
  normkit bandwidth [--threads N] [--size-mib N] [--reps N]

bench runs every standard case (benches/cases.json, embedded) and checks a sample of outputs
against a float64 reference. --filter matches Layer/AxBxC/LAYOUT/mode/dtype, e.g.
'LayerNorm/4096x4096' or '/NHWC/'. --bandwidth also measures this machine's memory bandwidth
and prints each case's share of it (CPU only); --threads takes 1 to 1024. bandwidth measures read, write and scale
(b = s*a) streams over two buffers (default 1024 MiB each) at 1 and 2 threads (or --threads N).

--device cuda[:N] runs the cases on GPU N (feature cuda), timed with CUDA events on the
device's stream after --warmup runs (default 3); a DeviceUnavailable error with the probe's
reason when there is no usable GPU. --device emu runs them on the host emulation of the CUDA
kernels, timed by the host clock (a smoke test of the device path, not a GPU timing).
--max-elements N shrinks every case to about N elements (batch first, then spatial dims;
--filter matches the full-size names). --min-elements N (at most 2^30) grows every case's batch
dimension to at least N elements, to run the cases on tensors larger than the last-level cache
(with --bandwidth: against the same 1 GiB streams); it needs about (8 + 2 x element size) bytes
of memory per element, more for backward cases. --device auto (the default) takes CUDA device
0 when this build has the cuda feature and finds a GPU, else the CPU (saying why).

On the CPU each case is warmed up for at least --warmup runs (default 3) and --warmup-ms
milliseconds (default 200; a fresh process's first runs are slower than its steady state;
--quick: 5 reps and no time-based warm-up), its output checked, then timed --reps times
(median and minimum reported). Its tensors (x, y, dy) start on 64-byte boundaries, as
PyTorch's CPU allocator places tensors; --offset-bytes B starts them B bytes past one instead
(B a multiple of the element size below 64; 16 is where a Vec<f32> from the system allocator
starts).

--serve (CPU) times on request instead of running the suite: each line of standard input is a
JSON object, {\"case\": NAME, \"threads\": T, \"reps\": R, \"warmup_ms\": MS} (NAME as
--filter prints it, at full size even with --max-elements/--min-elements) or
{\"bandwidth\": T, \"size_mib\": M}, answered by one JSON line (a --json row, the bandwidth,
or {\"error\": ...}); the last case's tensors are kept for the next request. This is how
benches/compare/compare.py interleaves normkit with PyTorch round by round in long-lived
processes.

CPU workers spin for 2 ms after each op before sleeping (as OpenMP runtimes do); the
environment variable NORMKIT_SPIN_US=N changes that (0 = sleep at once). With --threads N >= 2
this thread works on each op with N - 1 workers of its own (caller teams, as an OpenMP team);
NORMKIT_CALLER_TEAMS=0 hands each op to a shared pool instead.";

/// The largest `--min-elements` (2^30: 4 GiB f32 tensors).
const MAX_MIN_ELEMENTS: usize = 1 << 30;

#[derive(Debug)]
struct Opts {
    device: String,
    json: bool,
    threads: Option<usize>,
    dtypes: Option<Vec<DType>>,
    filter: Option<String>,
    reps: usize,
    warmup: usize,
    warmup_ms: f64,
    max_elements: Option<usize>,
    min_elements: Option<usize>,
    offset_bytes: usize,
    bandwidth: bool,
    size_mib: usize,
    serve: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        device: "auto".into(),
        json: false,
        threads: None,
        dtypes: None,
        filter: None,
        reps: 15,
        warmup: 3,
        warmup_ms: normkit::bench::Warmup::default().ms,
        max_elements: None,
        min_elements: None,
        offset_bytes: 0,
        bandwidth: false,
        size_mib: 1024,
        serve: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let count = |name: &str, v: String| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name}: expected a positive integer, got '{v}'"))
        };
        let bounded = |name: &str, v: String, max: usize| {
            count(name, v).and_then(|n| {
                if n <= max {
                    Ok(n)
                } else {
                    Err(format!("{name}: expected at most {max}, got {n}"))
                }
            })
        };
        match a.as_str() {
            "--device" => o.device = value("--device")?,
            "--json" => o.json = true,
            "--threads" => {
                let v = value("--threads")?;
                o.threads = Some(bounded("--threads", v, threads::MAX_THREADS)?);
            }
            "--dtype" => {
                let v = value("--dtype")?;
                let d = DType::parse(&v).ok_or_else(|| format!("--dtype: unknown dtype '{v}'"))?;
                o.dtypes.get_or_insert_with(Vec::new).push(d);
            }
            "--filter" => o.filter = Some(value("--filter")?),
            "--reps" => o.reps = count("--reps", value("--reps")?)?,
            "--quick" => {
                o.reps = 5;
                o.warmup_ms = 0.0;
            }
            "--warmup-ms" => {
                let v = value("--warmup-ms")?;
                o.warmup_ms = v
                    .parse::<f64>()
                    .ok()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .ok_or_else(|| {
                        format!("--warmup-ms: expected a non-negative number, got '{v}'")
                    })?;
            }
            "--warmup" => {
                let v = value("--warmup")?;
                o.warmup = v
                    .parse()
                    .map_err(|_| format!("--warmup: expected a non-negative integer, got '{v}'"))?;
            }
            "--max-elements" => {
                o.max_elements = Some(count("--max-elements", value("--max-elements")?)?)
            }
            "--min-elements" => {
                let n = count("--min-elements", value("--min-elements")?)?;
                if n > MAX_MIN_ELEMENTS {
                    return Err(format!(
                        "--min-elements: expected at most {MAX_MIN_ELEMENTS} (2^30), got {n}"
                    ));
                }
                o.min_elements = Some(n);
            }
            "--offset-bytes" => {
                let v = value("--offset-bytes")?;
                o.offset_bytes = v.parse().map_err(|_| {
                    format!("--offset-bytes: expected a non-negative integer, got '{v}'")
                })?;
            }
            "--bandwidth" => o.bandwidth = true,
            "--serve" => o.serve = true,
            "--size-mib" => {
                let v = value("--size-mib")?;
                o.size_mib = bounded("--size-mib", v, normkit::bench::MAX_SIZE_MIB)?;
            }
            other => return Err(format!("unknown argument '{other}'\n\n{USAGE}")),
        }
    }
    if o.max_elements.is_some() && o.min_elements.is_some() {
        return Err("--max-elements and --min-elements: expected one of them, got both".into());
    }
    Ok(o)
}

fn simd_features() -> Vec<(&'static str, bool)> {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        vec![
            ("sse2", std::arch::is_x86_feature_detected!("sse2")),
            ("sse4.1", std::arch::is_x86_feature_detected!("sse4.1")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
            ("avx512vl", std::arch::is_x86_feature_detected!("avx512vl")),
            (
                "avx512bf16",
                std::arch::is_x86_feature_detected!("avx512bf16"),
            ),
        ]
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        Vec::new()
    }
}

fn info() {
    println!("normkit {}", env!("CARGO_PKG_VERSION"));
    println!(
        "backends compiled in: cpu; cuda feature {}",
        if cfg!(feature = "cuda") { "on" } else { "off" }
    );
    println!("devices:");
    println!(
        "  cpu: available, {} threads by default (normkit::set_num_threads, --threads)",
        effective_threads(normkit::num_threads())
    );
    println!("  cuda: {}", normkit::backend::cuda::probe());
    let feats = simd_features();
    if feats.is_empty() {
        println!("SIMD features: not an x86 target (portable kernels)");
    } else {
        let on: Vec<&str> = feats.iter().filter(|f| f.1).map(|f| f.0).collect();
        let off: Vec<&str> = feats.iter().filter(|f| !f.1).map(|f| f.0).collect();
        println!("SIMD features detected: {}", on.join(" "));
        println!("SIMD features absent:   {}", off.join(" "));
    }
    println!("CPU kernel dispatch: {}", simd_level());
}

fn print_bandwidth(b: &Bandwidth) {
    println!(
        "threads {}: read {:6.1} GB/s   write {:6.1} GB/s   scale (read+write) {:6.1} GB/s",
        b.threads, b.read, b.write, b.scale
    );
}

fn run_bandwidth(o: &Opts) -> Result<(), String> {
    let threads = o.threads.map_or(vec![1, 2], |t| vec![t]);
    let reps = if o.reps == 15 { 5 } else { o.reps };
    println!(
        "memory bandwidth: two buffers of {} MiB, best of {reps} (GB/s = 1e9 bytes/s)",
        o.size_mib
    );
    for t in threads {
        print_bandwidth(&bandwidth(t, o.size_mib << 20, reps)?);
    }
    Ok(())
}

struct Progress {
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn new(total: usize, tty: bool) -> Progress {
        Progress {
            total,
            done: 0,
            tty,
        }
    }

    fn step(&mut self, what: &str) {
        self.done += 1;
        let width = 30;
        let filled = width * self.done / self.total.max(1);
        let bar = format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled));
        let line = format!("{bar} {}/{} {what}", self.done, self.total);
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Where the cases run.
enum Target {
    Cpu { threads: Vec<usize> },
    Device(DeviceSpec),
}

fn run_bench(o: &Opts) -> Result<bool, String> {
    let suite = Suite::standard()?;
    let cpu = || Target::Cpu {
        threads: o.threads.map_or(suite.threads.clone(), |t| vec![t]),
    };
    let target = match o.device.as_str() {
        "cpu" => cpu(),
        // the best device this build can use: CUDA device 0 when the probe finds one
        "auto" => match select_device(DeviceRequest::Auto).map_err(|e| e.to_string())? {
            Selection {
                device: Device::Cuda(i),
                ..
            } => Target::Device(
                DeviceSpec::parse(&format!("cuda:{i}"))
                    .ok_or_else(|| format!("--device auto: cannot use cuda:{i}"))?,
            ),
            Selection {
                fallback_reason, ..
            } => {
                if let Some(why) = fallback_reason {
                    eprintln!("normkit bench: no CUDA device ({why}); benchmarking the CPU");
                }
                cpu()
            }
        },
        other => Target::Device(DeviceSpec::parse(other).ok_or_else(|| {
            format!("--device: expected cpu, cuda, cuda:N, emu or auto, got '{other}'")
        })?),
    };
    let dtypes = o.dtypes.clone().unwrap_or_else(|| suite.dtypes.clone());
    let cases: Vec<Case> = suite
        .cases(&dtypes)
        .into_iter()
        .filter(|c| o.filter.as_deref().is_none_or(|f| c.name().contains(f)))
        .map(|c| sized(o, c))
        .collect();
    if cases.is_empty() {
        return Err("no case matches the filter".into());
    }
    if o.serve {
        return serve(o, &suite, &dtypes, &target);
    }
    let mut results: Vec<Measurement> = Vec::new();
    let mut failures = Vec::new();
    let mut record = |m: Result<Measurement, String>| match m {
        Ok(m) => {
            if o.json {
                println!("{}", m.to_json());
            }
            results.push(m);
        }
        Err(e) => failures.push(e),
    };
    let tty = std::io::stderr().is_terminal();
    let mut bw: Vec<Bandwidth> = Vec::new();
    match target {
        Target::Cpu { threads } => {
            if o.bandwidth {
                eprintln!("measuring memory bandwidth ({} MiB buffers)...", o.size_mib);
                bw = threads
                    .iter()
                    .map(|&t| bandwidth(t, o.size_mib << 20, 3))
                    .collect::<Result<_, _>>()?;
            }
            let mut progress = Progress::new(cases.len() * threads.len(), tty);
            for case in &cases {
                let mut prep = match Prepared::with_offset(case, &suite, o.offset_bytes) {
                    Ok(p) => p,
                    Err(e) => {
                        record(Err(e));
                        continue;
                    }
                };
                for &t in &threads {
                    progress.step(&format!("{} threads={t}", case.name()));
                    let warm = normkit::bench::Warmup {
                        runs: o.warmup,
                        ms: o.warmup_ms,
                    };
                    record(normkit::bench::measure(&mut prep, t, o.reps, warm));
                }
            }
            progress.finish();
        }
        Target::Device(spec) => {
            if o.bandwidth {
                eprintln!("note: --bandwidth measures host memory; ignored with --device");
            }
            let dev = spec
                .open()
                .map_err(|e| format!("--device {}: {:?}: {e}", o.device, e.kind))?;
            normkit::bench::device::prepare(&dev)
                .map_err(|e| format!("--device {}: {e}", o.device))?;
            let mut timer = dev.timer().map_err(|e| format!("timer: {e}"))?;
            eprintln!(
                "device {} ({}), timing: {}, {} warm-up run(s), median of {}",
                spec.name(),
                dev.info().name,
                timer.source(),
                o.warmup,
                o.reps
            );
            let mut progress = Progress::new(cases.len(), tty);
            for case in &cases {
                progress.step(&case.name());
                record(DevicePrepared::new(&dev, case, &suite).and_then(|mut p| {
                    measure_device(&mut p, timer.as_mut(), &spec.name(), o.warmup, o.reps)
                }));
            }
            progress.finish();
        }
    }
    if !o.json {
        print_table(&results, &bw);
    }
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    Ok(failures.is_empty())
}

/// `c` shrunk (`--max-elements`) or grown (`--min-elements`) as asked.
fn sized(o: &Opts, c: Case) -> Case {
    match (o.max_elements, o.min_elements) {
        (Some(m), _) => c.shrunk(m),
        (None, Some(m)) => c.grown(m),
        (None, None) => c,
    }
}

/// `normkit bench --serve` ([`normkit::bench::serve`]): the CPU cases of `--dtype` (all the
/// suite's by default), shrunk or grown as asked, each answered for under its full-size name.
fn serve(o: &Opts, suite: &Suite, dtypes: &[DType], target: &Target) -> Result<bool, String> {
    if !matches!(target, Target::Cpu { .. }) {
        return Err(format!(
            "--serve: expected --device cpu, got --device {}",
            o.device
        ));
    }
    let cases = suite
        .cases(dtypes)
        .into_iter()
        .map(|c| (c.name(), sized(o, c)))
        .collect();
    let served = normkit::bench::Served {
        suite,
        cases,
        offset_bytes: o.offset_bytes,
        warmup_runs: o.warmup,
    };
    let stdin = std::io::stdin();
    normkit::bench::serve(&served, stdin.lock(), std::io::stdout().lock())
        .map_err(|e| format!("--serve: {e}"))?;
    Ok(true)
}

fn print_table(results: &[Measurement], bw: &[Bandwidth]) {
    println!(
        "\n{:<18} {:<18} {:<9} {:<5} {:<8} {:>3} {:>10} {:>9}{}",
        "layer",
        "shape",
        "layout",
        "mode",
        "dtype",
        "thr",
        "median ms",
        "GB/s",
        if bw.is_empty() { "" } else { "  % of bw" }
    );
    for m in results {
        let share = bw
            .iter()
            .find(|b| b.threads == m.threads)
            .map_or(String::new(), |b| {
                format!("  {:>6.0}%", 100.0 * m.gbps() / b.scale)
            });
        println!(
            "{:<18} {:<18} {:<9} {:<5} {:<8} {:>3} {:>10.3} {:>9.1}{share}",
            m.case.layer,
            m.case.shape_str(),
            m.case.layout,
            m.case.mode,
            normkit::bench::dtype_name(m.case.dtype),
            if m.threads == 0 {
                "-".to_string()
            } else {
                m.threads.to_string()
            },
            m.median_ms,
            m.gbps(),
        );
    }
    for b in bw {
        print_bandwidth(b);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &args[..]),
    };
    let opts = match parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("normkit: {e}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        "info" => info(),
        "bandwidth" => {
            if let Err(e) = run_bandwidth(&opts) {
                eprintln!("normkit: {e}");
                return ExitCode::FAILURE;
            }
        }
        "bench" => match run_bench(&opts) {
            Ok(true) => {}
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => {
                eprintln!("normkit: {e}");
                return ExitCode::FAILURE;
            }
        },
        "help" | "--help" | "-h" => println!("{USAGE}"),
        other => {
            eprintln!("normkit: unknown command '{other}'\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
