//! Building and encoding a profile the size of a busy interval: 10k samples
//! over 2k distinct stacks.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferroscope_pprof::{Label, LineSpec, LocationSpec, MappingSpec, ProfileBuilder, encode_gzip};

const STACKS: usize = 2_000;
const SAMPLES: usize = 10_000;
const FUNCTIONS: usize = 500;

/// Function names per stack, leaf first; deterministic pseudo-random.
fn stacks() -> Vec<Vec<String>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..STACKS)
        .map(|i| {
            let depth = 8 + (next() % 24) as usize;
            let mut s: Vec<String> = (0..depth)
                .map(|_| format!("crate::module::function_{}", next() % FUNCTIONS as u64))
                .collect();
            // Make every stack distinct.
            s[0] = format!("leaf_{i}");
            s
        })
        .collect()
}

fn build(stacks: &[Vec<String>]) -> ferroscope_pprof::proto::Profile {
    let mut b = ProfileBuilder::cpu(97);
    let m = b.add_mapping(&MappingSpec {
        start: 0x40_0000,
        limit: 0x80_0000,
        offset: 0,
        filename: "app",
        build_id: "0123456789abcdef",
        has_functions: true,
    });
    let period = b.period();
    let mut locs = Vec::new();
    for i in 0..SAMPLES {
        let stack = &stacks[i % stacks.len()];
        locs.clear();
        for name in stack {
            let line = [LineSpec {
                function: name,
                system_name: name,
                filename: "src/lib.rs",
                start_line: 1,
                line: 10,
            }];
            let address = 0x40_1000 + name.len() as u64 * 16;
            locs.push(b.add_location(&LocationSpec {
                mapping: Some(m),
                address,
                lines: &line,
            }));
        }
        b.add_sample(&locs, &[period], &[Label::Num("pid", (i % 7) as i64, None)]);
    }
    b.build()
}

fn bench(c: &mut Criterion) {
    let stacks = stacks();
    c.bench_function("build 10k samples / 2k stacks", |b| {
        b.iter(|| black_box(build(black_box(&stacks))))
    });
    let profile = build(&stacks);
    c.bench_function("encode_gzip 10k samples / 2k stacks", |b| {
        b.iter(|| black_box(encode_gzip(black_box(&profile))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
