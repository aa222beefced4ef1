// f64 has 4 lanes in an AVX2 register: the micro-tile is 6x8 and kc doubles back to 256
graph layer(%x: f64[N,300], %w: f64[300,200], %b: f64[200]) -> f64[N,200] {
  %0 = dense[act=leaky_relu, alpha=0.1](%x, %w, %b) : f64[N,200]
  return %0
}
// ---- expected after: tile{machine=generic}
graph layer(%x: f64[N,300], %w: f64[300,200], %b: f64[200]) -> f64[N,200] {
  %0 = dense[act=leaky_relu, alpha=0.1, tile=(mc=36, nc=200, kc=300, mr=6, nr=8, parallel=m, pack=true)](%x, %w, %b) : f64[N,200]
  return %0
}
// decision: [tile] assumed (machine) generic x86-64 (AVX2): 8 cores, L1d 32 KiB, L2 512 KiB, L3 8 MiB, 256-bit vectors + FMA (generic): tilings are planned for it (TILEFUSE_MACHINE or tile{machine=...} change it)
// decision: [tile] chosen (model) %0 = dense[act=leaky_relu, alpha=0.1](%x, %w, %b) : f64[N,200]: mr x nr = 6x8: 12 accumulators of 4 f64 lanes (256-bit vectors) stay in registers; kc=300: a 300x8 B micro-panel (18.8 KiB) fits a quarter of the 512 KiB L2 (all of k=300: one k block, the output written once); mc=36: m=N (planned as 256) split over 8 cores (L2 allows 108); nc=200: the 300x200 B panel (468.8 KiB) fits half the 8 MiB L3 (all of n=200, rounded up to a multiple of nr=8); parallel=m: 30,720,000 flops ≈ 1.28 ms on one core; m=N (planned as 256) rows give each of 8 cores at least 12 (two micro-tile rows); pack=true: the CPU kernels read B from micro-panels packed once, at compile time, and A from panels packed per k block (from 5 rows on; fewer rows are read in place)
