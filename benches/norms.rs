//! Criterion benches: every standard case (forward and backward) of `benches/cases.json` × f32/bf16 × 1 and 2
//! threads. Inputs are prepared outside the timed loop and each result is checked once against
//! the float64 reference before timing.
//!
//! `cargo bench --bench norms` (all), `cargo bench --bench norms -- LayerNorm/4096` (a subset).
//! Measurement time is 2 s per case so that a full run is practical on 2 cores.

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use normkit::backend::cpu::threads;
use normkit::bench::{Prepared, Suite};
use std::time::Duration;

fn norms(c: &mut Criterion) {
    let suite = match Suite::standard() {
        Ok(s) => s,
        Err(e) => panic!("embedded cases.json: {e}"),
    };
    let mut group = c.benchmark_group("norms");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for case in suite.cases(&suite.dtypes) {
        let mut prep = match Prepared::new(&case, &suite) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        if let Err(e) = prep
            .run()
            .map_err(|e| e.to_string())
            .and_then(|_| prep.check(256))
        {
            panic!("{}: {e}", case.name());
        }
        group.throughput(Throughput::Bytes(case.bytes()));
        for &t in &suite.threads {
            group.bench_function(BenchmarkId::new(case.name(), format!("threads={t}")), |b| {
                b.iter(|| {
                    threads::install(Some(t), || black_box(prep.run()))
                        .expect("a prepared case runs")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, norms);
criterion_main!(benches);
