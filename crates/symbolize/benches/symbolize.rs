//! Parsing libc's symbols, and lookup throughput.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferroscope_symbolize::elf::ElfSymbols;

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

fn bench(c: &mut Criterion) {
    let data = std::fs::read(LIBC).expect("reading libc");
    c.bench_function("parse libc", |b| {
        b.iter(|| ElfSymbols::parse(black_box(&data)).expect("parse"))
    });

    let syms = ElfSymbols::parse(&data).expect("parse");
    // Addresses spread over the symbols, some inside functions, in a shuffled order.
    let addrs: Vec<u64> = syms
        .iter()
        .enumerate()
        .map(|(i, (start, size, _))| start + (i as u64 % size.max(1)))
        .collect();
    let mut order: Vec<u64> = (0..addrs.len() as u64)
        .map(|i| addrs[(i * 7919 % addrs.len() as u64) as usize])
        .collect();
    order.truncate(4096);
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(order.len() as u64));
    group.bench_function("libc", |b| {
        b.iter(|| {
            order
                .iter()
                .filter(|&&a| syms.lookup(black_box(a)).is_some())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
