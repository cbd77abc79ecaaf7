//! A small seeded generator (xorshift64) for the torture, fuzz and checker tests: no seed from
//! the clock, so a failing run can be replayed with the same seed.

pub struct SeededRng(u64);

impl SeededRng {
    /// Any seed works; zero (a fixed point of xorshift) is replaced.
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}
