//! Request streams of the scenarios, drawn once before timing with fixed seeds, so every
//! subject sees the very same requests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use super::{Ledger, Sku};

/// Requests drawn per thread; a power of two (see [`super::at`]).
pub const STREAM_LEN: usize = 1 << 16;

/// Orders drawn per thread for S4; a power of two.
pub const ORDERS_LEN: usize = 1 << 12;

/// What one request of S2/S3/S5 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read the SKU's level (20 %).
    Level,
    /// Hold 1 unit, then commit it (50 %: checkout, payment succeeded).
    ReserveCommit,
    /// Hold 1 unit, then release it (30 %: payment failed or cart abandoned).
    ReserveRelease,
}

/// One request: a kind on a SKU.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    /// The SKU.
    pub sku: Sku,
    /// What to do.
    pub kind: Kind,
}

/// Serves one request on `ledger`.
#[inline]
pub fn serve<L: Ledger>(ledger: &L, request: Request) {
    let lines = [(request.sku, 1)];
    match request.kind {
        Kind::Level => {
            std::hint::black_box(ledger.available(request.sku));
        }
        Kind::ReserveCommit => match ledger.reserve(&lines) {
            Some(hold) => ledger.commit(hold, &lines),
            None => super::count_refusal(),
        },
        Kind::ReserveRelease => match ledger.reserve(&lines) {
            Some(hold) => ledger.release(hold, &lines),
            None => super::count_refusal(),
        },
    }
}

fn rng(thread: usize, salt: u64) -> StdRng {
    StdRng::seed_from_u64(0x5EED_0000 ^ salt ^ (thread as u64) << 32)
}

fn kind(rng: &mut StdRng) -> Kind {
    match rng.gen_range(0..10) {
        0..=1 => Kind::Level,
        2..=6 => Kind::ReserveCommit,
        _ => Kind::ReserveRelease,
    }
}

/// SKUs drawn uniformly from `0..skus`, one stream per thread.
pub fn uniform_skus(threads: usize, skus: u64) -> Vec<Vec<Sku>> {
    (0..threads)
        .map(|thread| {
            let mut rng = rng(thread, 1);
            (0..STREAM_LEN).map(|_| rng.gen_range(0..skus)).collect()
        })
        .collect()
}

/// S2: uniform SKUs over `0..skus` with the request mix of [`Kind`].
pub fn uniform_requests(threads: usize, skus: u64) -> Vec<Vec<Request>> {
    (0..threads)
        .map(|thread| {
            let mut rng = rng(thread, 2);
            (0..STREAM_LEN)
                .map(|_| Request {
                    sku: rng.gen_range(0..skus),
                    kind: kind(&mut rng),
                })
                .collect()
        })
        .collect()
}

/// S7 hot and cold: every request a hold of 1 unit then its commit; half of them on the
/// hot SKU 0, the other half uniform over the cold SKUs `1..=cold_skus`.
pub fn hot_and_cold_requests(threads: usize, cold_skus: u64) -> Vec<Vec<Request>> {
    (0..threads)
        .map(|thread| {
            let mut rng = rng(thread, 7);
            (0..STREAM_LEN)
                .map(|_| Request {
                    sku: if rng.gen_bool(0.5) {
                        0
                    } else {
                        rng.gen_range(1..=cold_skus)
                    },
                    kind: Kind::ReserveCommit,
                })
                .collect()
        })
        .collect()
}

/// FNV-1a of the 8 bytes of `value`, as YCSB's `ScrambledZipfianGenerator` uses.
fn fnv1a_64(value: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

/// S3: YCSB's scrambled Zipfian: a Zipf(`exponent`) rank over `skus` items, hashed
/// (FNV-1a) onto a SKU so the hot SKUs are spread over the key space; the mix of [`Kind`].
pub fn zipf_requests(threads: usize, skus: u64, exponent: f64) -> Vec<Vec<Request>> {
    let zipf = Zipf::new(skus, exponent).expect("a valid Zipf distribution");
    (0..threads)
        .map(|thread| {
            let mut rng = rng(thread, 3);
            (0..STREAM_LEN)
                .map(|_| {
                    let rank = zipf.sample(&mut rng) as u64; // 1..=skus
                    Request {
                        sku: fnv1a_64(rank) % skus,
                        kind: kind(&mut rng),
                    }
                })
                .collect()
        })
        .collect()
}

/// One thread's S4 orders: lines of every order back to back.
#[derive(Debug, Clone, Default)]
pub struct Orders {
    lines: Vec<(Sku, u64)>,
    /// `(start, len, rollback)` of each order in `lines`.
    orders: Vec<(u32, u32, bool)>,
}

impl Orders {
    /// The lines of order `i` (cycling) and whether it rolls back.
    #[inline]
    pub fn get(&self, i: u64) -> (&[(Sku, u64)], bool) {
        let (start, len, rollback) = super::at(&self.orders, i);
        (
            &self.lines[start as usize..(start + len) as usize],
            rollback,
        )
    }
}

/// TPC-C's NURand(A, x, y) (clause 2.1.6) with the run constant `c`.
fn nurand(rng: &mut StdRng, a: u64, x: u64, y: u64, c: u64) -> u64 {
    (((rng.gen_range(0..=a) | rng.gen_range(x..=y)) + c) % (y - x + 1)) + x
}

/// S4: TPC-C NewOrder's stock part (clause 2.4.1): 5-15 distinct items drawn by
/// NURand(8191, 1, 100000), 1-10 units each, 1 % of orders roll back. Item `i` is SKU `i - 1`.
pub fn tpcc_orders(threads: usize) -> Vec<Orders> {
    const C_FOR_ITEMS: u64 = 259; // the run constant C of clause 2.1.6, fixed for repeatability
    (0..threads)
        .map(|thread| {
            let mut rng = rng(thread, 4);
            let mut orders = Orders::default();
            for _ in 0..ORDERS_LEN {
                let count = rng.gen_range(5..=15);
                let start = orders.lines.len();
                while orders.lines.len() - start < count {
                    let sku = nurand(&mut rng, 8191, 1, 100_000, C_FOR_ITEMS) - 1;
                    if orders.lines[start..].iter().all(|(other, _)| *other != sku) {
                        orders.lines.push((sku, rng.gen_range(1..=10)));
                    }
                }
                let rollback = rng.gen_range(0..100) == 0;
                orders.orders.push((start as u32, count as u32, rollback));
            }
            orders
        })
        .collect()
}

/// Places one S4 order: hold every line, then commit, or release when it rolls back.
#[inline]
pub fn new_order<L: Ledger>(ledger: &L, lines: &[(Sku, u64)], rollback: bool) {
    match ledger.reserve(lines) {
        Some(hold) if rollback => ledger.release(hold, lines),
        Some(hold) => ledger.commit(hold, lines),
        None => super::count_refusal(),
    }
}
